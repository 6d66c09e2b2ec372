"""``exposst.json``: how an adapter was trained, beside its PEFT files.

The trainer writes it; the engine and the server read it so that sessions on an
adapter run with the layout, policy, ``slot_len`` and prompt it was trained with,
unless a request says otherwise.

Keys (all optional when read): ``layout`` (``exposst``, ``shift`` or ``offline``),
``policy`` (a policy spec or mix, e.g. ``wait-k:1-9``), ``inference_policy`` (the
spec sessions use by default, e.g. ``wait-3``), ``slot_len``, ``source_lang``,
``target_lang``, ``system_prompt``, ``refeed`` (the refeed rule it was trained with),
``base_model``, ``data``, ``steps``, ``seed``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .defaults import CACHE_KEEPING_MODES, TRAIN_MODES

logger = logging.getLogger(__name__)
FILENAME = "exposst.json"
# SessionConfig fields an adapter's record may set: record key -> session field
SESSION_DEFAULTS = {
    "inference_policy": "policy",
    "slot_len": "slot_len",
    "source_lang": "source_lang",
    "target_lang": "target_lang",
    "system_prompt": "system_prompt",
    "layout": "mode",
    "refeed": "refeed",
}


def write_adapter_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / FILENAME
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


def read_adapter_meta(folder: str | Path) -> dict[str, Any]:
    """The record, or ``{}`` for an adapter without one; a broken file is an error."""
    path = Path(folder) / FILENAME
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return meta


def session_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """Session settings an adapter's record implies.

    A cache-keeping layout (``exposst``, ``shift``) becomes the session mode; an
    ``offline``-trained adapter leaves the mode to the request or server default.
    """
    out = {field: meta[key] for key, field in SESSION_DEFAULTS.items() if key in meta}
    layout = out.pop("mode", None)
    if layout is not None and layout not in TRAIN_MODES:
        raise ValueError(f"unknown layout {layout!r} in {FILENAME}")
    if layout in CACHE_KEEPING_MODES:
        out["mode"] = layout
    return out


def adapter_session_settings(folder: str | Path) -> dict[str, Any]:
    """The session settings an adapter folder's ``exposst.json`` implies.

    The one place a record is applied: the engine (and through it the server, the
    demo, ``exposst-eval`` and the SimulEval agents) layers these between its own
    defaults and what a request asks for.
    """
    return session_defaults(read_adapter_meta(folder))


# settings an exposst.json may give every session of a merged model (system_prompt is
# per request: it changes the prompt, not a server default)
SERVER_SETTINGS = ("policy", "slot_len", "mode", "source_lang", "target_lang", "refeed")


def merged_model_settings(model: str | Path) -> dict[str, Any]:
    """Server-wide session settings of a merged checkpoint's ``exposst.json`` ({} if none).

    ``exposst-merge`` copies the adapter's record beside the merged weights; these are
    the settings that apply to every session of the model, as an adapter's do to its
    LoRA requests (:func:`adapter_session_settings`).
    """
    folder = Path(model)
    if not (folder / FILENAME).is_file():
        return {}
    settings = adapter_session_settings(folder)
    if settings.get("system_prompt"):
        logger.warning(
            "%s sets a system_prompt; it is not applied server-wide (send it per request)",
            folder / FILENAME,
        )
    return {key: settings[key] for key in SERVER_SETTINGS if settings.get(key) is not None}
