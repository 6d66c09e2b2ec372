"""Engine-argument defaults for ExPosST engines (ledger in :mod:`vllm_exposst.patch`).

``EngineArgs.create_model_config`` is where ``--dtype`` and ``--additional-config``
are still plain arguments, in every path that starts an engine (``vllm serve``,
``SimulEngine.from_engine_args``, ``exposst-eval``, ``make demo``).  For an engine on
ExPosST's scheduler it fills in what was left unset: ``--dtype auto`` becomes the
platform's dtype (:func:`vllm_exposst.precision.platform_dtype`), and a merged
checkpoint's ``exposst.json`` becomes the server's session defaults unless
``--additional-config exposst`` names them.  Other engines are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from ..adapter_meta import merged_model_settings
from ..precision import dtype_name, resolve_dtype
from ..switch import is_exposst_scheduler
from . import replace

logger = logging.getLogger("vllm.exposst")  # under vLLM's handler: in its startup log


def exposst_defaults(args: Any) -> None:
    """Set ``args.dtype`` and ``args.additional_config['exposst']`` where left unset."""
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
