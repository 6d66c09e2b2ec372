"""How long a process spins before it sleeps on a message (ledger in :mod:`vllm_exposst.patch`).

On the CPU, vLLM runs the engine core and its worker in two processes that talk through
shared-memory queues (``shm_broadcast.MessageQueue``): the core broadcasts each step's
schedule, the worker answers with its output.  A reader of such a queue spins for
``busy_loop_s`` (1 s) after its last message, calling ``sched_yield()`` in a loop,
before it sleeps on a ZMQ notification.  Under steady load that means the core spins
for the whole of every forward pass while it waits for the worker's answer, and the
worker spins for the whole of the core's scheduling.  vLLM pays for this by reserving a
core for the engine-core process (``VLLM_CPU_NUM_OF_RESERVED_CPU``), so on a 2-core
machine the model runs on one core.

With :data:`SPIN_ENV` set (by :func:`vllm_exposst.patch.engine_args.cpu_process_layout`
for ExPosST engines on the CPU, inherited by the engine core and the worker), a reader
spins at most that many seconds and then sleeps until the writer's notification, which
the writer sends on every message.  Other engines, and every process without the
variable, keep vLLM's behaviour.
"""

from __future__ import annotations

import os
from typing import Any

from . import replace

SPIN_ENV = "VLLM_EXPOSST_READER_SPIN_S"


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
            if is_reader and spin is not None:
                self.busy_loop_s = spin

        return __init__

    replace(shm_broadcast.SpinCondition, "__init__", with_spin)
