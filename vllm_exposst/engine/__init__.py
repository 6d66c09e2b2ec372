"""Simultaneous translation sessions over vLLM's ``AsyncLLM`` streaming input.

``types`` (configuration, results, errors), ``source`` (source as it arrives),
``request`` (one streaming-input request), ``decoder`` (the READ/WRITE loop),
``session`` (the client's side), ``simul_engine`` (admission, adapters, sessions),
``loop`` (an event loop in a thread for synchronous callers).
"""

from .loop import LoopThread
from .session import Session
from .simul_engine import SimulEngine
from .types import (
    EngineDead,
    SessionConfig,
    SessionError,
    SessionRejected,
    SessionResult,
    SessionTimeout,
    SessionTooLong,
    TargetPiece,
    TurnStats,
    UnknownModelError,
)

__all__ = [
    "EngineDead",
    "LoopThread",
    "Session",
    "SessionConfig",
    "SessionError",
    "SessionRejected",
    "SessionResult",
    "SessionTimeout",
    "SessionTooLong",
    "SimulEngine",
    "TargetPiece",
    "TurnStats",
    "UnknownModelError",
]
