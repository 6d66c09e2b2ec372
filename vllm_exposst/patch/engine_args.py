"""Engine-argument defaults for ExPosST engines (ledger in :mod:`vllm_exposst.patch`).

``EngineArgs.create_model_config`` is where ``--dtype`` and ``--additional-config``
are still plain arguments, in every path that starts an engine (``vllm serve``,
``SimulEngine.from_engine_args``, ``exposst-eval``, ``make demo``).  For an engine on
ExPosST's scheduler it fills in what was left unset: ``--dtype auto`` becomes the
platform's dtype (:func:`vllm_exposst.precision.platform_dtype`), and a merged
checkpoint's ``exposst.json`` becomes the server's session defaults unless
``--additional-config exposst`` names them, and on the CPU ``--block-size`` left unset
becomes 32 (:func:`small_blocks_on_cpu`).  Other engines are untouched.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..adapter_meta import merged_model_settings
from ..precision import dtype_name, resolve_dtype
from ..switch import is_exposst_scheduler
from . import replace
from .shm_readers import SPIN_ENV

logger = logging.getLogger("vllm.exposst")  # under vLLM's handler: in its startup log

# the smallest KV block vLLM's CPU attention backend takes (a multiple of 32)
CPU_PROMPT_BLOCK = 32


def small_blocks_on_cpu(args: Any) -> None:
    """On the CPU, ``--block-size`` left unset becomes 32 instead of vLLM's 128.

    Prefix caching shares whole blocks only.  A session's prompt prefix (system prompt
    and instruction: 34 tokens for SmolLM2's template) never fills a 128-token block, so
    each sentence of a live speaker computed it again (docs/benchmarks.md, live
    capacity); with 32-token blocks every sentence after the first reuses the first 32.
    """
    from vllm.platforms import current_platform

    if args.block_size is None and current_platform.is_cpu():
        args.block_size = CPU_PROMPT_BLOCK
        how = "CPU default; --block-size to change"
        logger.info("ExPosST KV block size: %d (%s)", args.block_size, how)


def cpu_process_layout() -> None:
    """On the CPU, let the engine's processes sleep while they wait for each other.

    vLLM's engine core spins while its worker runs a step (and the worker while the
    core schedules), and vLLM reserves a core for the core's process because of it.
    With sleeping readers that core is free for the API server between steps.  On a
    machine that runs nothing but the server, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` also
    gives the model every core (1.18x faster LoRA steps on 2 cores, docs/benchmarks.md);
    it is not the default because a worker whose threads share their cores with other
    work waits at every barrier for the slowest one.  ``VLLM_EXPOSST_READER_SPIN_S=1``
    restores vLLM's spinning.  The processes the engine starts inherit the variables.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        os.environ.setdefault(SPIN_ENV, "0")  # the environment overrides it
        logger.info(
            "ExPosST CPU layout: queue readers spin %s s; cores reserved for the engine core: %s",
            os.environ[SPIN_ENV],
            os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "vLLM's default"),
        )


def exposst_defaults(args: Any) -> None:
    """Set ``args.dtype``, ``args.block_size`` and ``args.additional_config['exposst']``
    where left unset, and the CPU's process layout (:func:`cpu_process_layout`)."""
    small_blocks_on_cpu(args)
    cpu_process_layout()
    requested = args.dtype
    args.dtype = resolve_dtype(requested)
    how = "default for this platform; --dtype to change" if args.dtype != requested else "asked"
    logger.info("ExPosST engine dtype: %s (%s)", dtype_name(args.dtype), how)
    settings = merged_model_settings(args.model)
    if settings:
        additional = dict(args.additional_config or {})
        given = dict(additional.get("exposst") or {})
        additional["exposst"] = {**settings, **given}
        args.additional_config = additional
        logger.info("ExPosST session defaults from %s/exposst.json: %s", args.model, settings)


def apply() -> None:
    from vllm.engine.arg_utils import EngineArgs

    def with_defaults(original: Any) -> Any:
        def create_model_config(self: Any) -> Any:
            if is_exposst_scheduler(getattr(self, "scheduler_cls", None)):
                exposst_defaults(self)
            return original(self)

        return create_model_config

    replace(EngineArgs, "create_model_config", with_defaults)
