"""Which dtype ExPosST engines run in, and the session defaults a merged checkpoint carries.

vLLM's ``--dtype auto`` turns a float32 checkpoint into bfloat16 on the CPU.  ExPosST
engines on the CPU run float32 instead (docs/benchmarks.md, "Precision"): there the
engine equals the transformers reference decoder and a request translates the same
alone as beside other sessions; bfloat16 drifts by 0.1-0.25 in log-probability.
Other platforms keep vLLM's choice.  ``--dtype bfloat16`` (``dtype=`` in Python)
overrides it.  Core layer: imports nothing of ours but ``adapter_meta``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .adapter_meta import FILENAME, read_adapter_meta, session_defaults

logger = logging.getLogger(__name__)

CPU_DTYPE = "float32"
# ExposstOptions fields an exposst.json may set server-wide (system_prompt is per session)
SERVER_SETTINGS = ("policy", "slot_len", "mode", "source_lang", "target_lang", "refeed")


def platform_dtype() -> str:
    """What ``auto`` means for an ExPosST engine here: float32 on the CPU, else vLLM's own."""
    from vllm.platforms import current_platform

    return CPU_DTYPE if current_platform.is_cpu() else "auto"


def resolve_dtype(requested: Any) -> Any:
    """``requested`` unless it is ``auto``/None, else :func:`platform_dtype`."""
    if requested is None or (isinstance(requested, str) and requested.lower() == "auto"):
        return platform_dtype()
    return requested


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` or ``"float32"`` -> ``"float32"`` (for logs, stats and records)."""
    return str(dtype).removeprefix("torch.")


def model_session_settings(model: str | Path) -> dict[str, Any]:
    """Server-wide session settings of a merged checkpoint's ``exposst.json`` ({} if none).

    ``exposst-merge`` copies the adapter's record beside the merged weights; these are
    the settings that apply to every session of the model, as an adapter's do to its
    LoRA requests.  A non-null ``system_prompt`` cannot be a server default: it is
    logged and left to the requests.
    """
    folder = Path(model)
    if not (folder / FILENAME).is_file():
        return {}
    settings = session_defaults(read_adapter_meta(folder))
    if settings.get("system_prompt"):
        logger.warning(
            "%s sets a system_prompt; it is not applied server-wide (send it per request)",
            folder / FILENAME,
        )
    return {key: settings[key] for key in SERVER_SETTINGS if settings.get(key) is not None}
