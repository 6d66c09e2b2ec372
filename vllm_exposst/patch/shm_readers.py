"""How a process waits for a message from its engine core or worker (ledger in
:mod:`vllm_exposst.patch`).

On the CPU, vLLM runs the engine core and its worker in two processes that talk through
shared-memory queues (``shm_broadcast.MessageQueue``): the core broadcasts each step's
schedule, the worker answers with its output.  A reader of such a queue spins for
``busy_loop_s`` (1 s) after its last message, calling ``sched_yield()`` in a loop,
before it sleeps on the writer's ZMQ notification.  Under steady load the core spins
for the whole of every forward pass while it waits for the worker's answer, and the
worker spins while the core schedules.  vLLM pays for this by reserving a core for the
engine-core process (``VLLM_CPU_NUM_OF_RESERVED_CPU``), so on a 2-core machine the
model runs on one core while the other mostly spins.

With :data:`SPIN_ENV` set (by :func:`vllm_exposst.patch.engine_args.cpu_process_layout`
for ExPosST engines on the CPU, inherited by the engine core and the worker), a reader
spins at most that many seconds and then sleeps on the notification.  A notification
can be lost (vLLM re-reads the queue's flag every 5 s for that reason, which is rare
for its readers, which seldom sleep); so while the queue is active (a message within
the last second, vLLM's spin window) a sleeping reader also wakes every
:data:`ACTIVE_RECHECK_MS` to look at the flag itself.  Other engines, and every process
without the variable, keep vLLM's behaviour.
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import replace

SPIN_ENV = "VLLM_EXPOSST_READER_SPIN_S"
ACTIVE_SECONDS = 1.0  # vLLM's spin window: the queue counts as active this long
ACTIVE_RECHECK_MS = 2  # a lost notification costs at most this while active


def reader_spin_seconds() -> float | None:
    """The spin a reader gets in this process, or None for vLLM's own."""
    value = os.environ.get(SPIN_ENV, "")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{SPIN_ENV}={value!r}: expected seconds (e.g. 0)") from None


def apply() -> None:
    from vllm.distributed.device_communicators import shm_broadcast

    def with_spin(original: Any) -> Any:
        def __init__(self: Any, is_reader: bool, *args: Any, **kwargs: Any) -> None:
            original(self, is_reader, *args, **kwargs)
            spin = reader_spin_seconds()
            self.exposst_spin = spin if is_reader else None
            if self.exposst_spin is not None:
                self.busy_loop_s = spin

        return __init__

    def with_bounded_sleep(original: Any) -> Any:
        def wait(self: Any, timeout_ms: int | None = None) -> None:
            active = time.monotonic() <= self.last_read + ACTIVE_SECONDS
            if getattr(self, "exposst_spin", None) is not None and active:
                capped = ACTIVE_RECHECK_MS if timeout_ms is None else timeout_ms
                timeout_ms = min(capped, ACTIVE_RECHECK_MS)
            return original(self, timeout_ms)

        return wait

    replace(shm_broadcast.SpinCondition, "__init__", with_spin)
    replace(shm_broadcast.SpinCondition, "wait", with_bounded_sleep)
