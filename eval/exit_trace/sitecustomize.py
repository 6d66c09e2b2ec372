"""Trace why an exit leaves "leaked semaphore / shared_memory" warnings behind.

Put this folder first on ``PYTHONPATH``; every Python process of the run (the engine
core and its workers too) then appends to ``$EXIT_TRACE_LOG`` each resource-tracker
register/unregister (with a short stack), each Python signal handler that runs, each
``Process.terminate``/``kill`` and each ``multiprocessing`` exit function:

    PYTHONPATH=eval/exit_trace EXIT_TRACE_LOG=/tmp/trace.txt .venv/bin/python -m vllm_exposst.demo
    .venv/bin/python eval/exit_trace/leaks.py /tmp/trace.txt

A name registered and never unregistered is what the tracker warns about; a process
with no ``signal`` or ``exit_function`` line was killed before it could clean up.
"""

import multiprocessing.process as _process
import multiprocessing.util as _util
import os
import signal as _signal
import time as _time
import traceback
from multiprocessing import resource_tracker as _tracker

_LOG = os.environ.get("EXIT_TRACE_LOG", "/tmp/exit_trace.txt")


def _write(text: str) -> None:
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {text} {_time.time():.3f}\n")


def _where() -> str:
    frames = traceback.extract_stack(limit=10)[:-2]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames[::-1])


def _wrap_tracker(name: str) -> None:
    original = getattr(_tracker, name)

    def wrapped(resource: str, rtype: str):
        _write(f"{name} {rtype} {resource} | {_where()} |")
        return original(resource, rtype)

    setattr(_tracker, name, wrapped)


def _wrap_process(name: str) -> None:
    original = getattr(_process.BaseProcess, name)

    def wrapped(self, *args, **kwargs):
        _write(f"{name} -> {self.pid} | {_where()} |")
        return original(self, *args, **kwargs)

    setattr(_process.BaseProcess, name, wrapped)


def _traced_signal(signum, handler, _original=_signal.signal):
    if callable(handler):
        inner = handler

        def handler(number, frame, _inner=inner):
            _write(f"signal {number}")
            return _inner(number, frame)

    return _original(signum, handler)


def _traced_exit_function(*args, _original=_util._exit_function, **kwargs):
    _write("exit_function")
    return _original(*args, **kwargs)


for _name in ("register", "unregister"):
    _wrap_tracker(_name)
for _name in ("terminate", "kill"):
    _wrap_process(_name)
_signal.signal = _traced_signal
_util._exit_function = _traced_exit_function
