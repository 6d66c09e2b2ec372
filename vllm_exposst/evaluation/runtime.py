"""Engine options for in-process evaluation (platform dtype, eager, optional adapter),
start-up, and what the entry points share (the dtype to report, quiet imports)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .. import models
from ..precision import resolve_dtype

ADAPTER_NAME = "adapter"
# vLLM 0.32 accepts these values of ``max_lora_rank`` only
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(adapter: str | Path) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    rank = int(config.get("r", 8))
    for allowed in _LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} of {adapter} is above vLLM's limit {_LORA_RANKS[-1]}")


def lora_targets(adapter: str | Path) -> list[str] | None:
    """The modules the adapter trained (its ``target_modules``), for vLLM's
    ``lora_target_modules``: without it vLLM wraps every module it could put LoRA on,
    the embeddings and the LM head included, and runs their (zero) LoRA every step.
    None (all) when the config names them by pattern."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    targets = config.get("target_modules")
    return sorted(targets) if isinstance(targets, list) and targets else None


def engine_options(
    model: str,
    adapter: str | Path | None = None,
    *,
    max_num_seqs: int = 32,
    max_model_len: int = 2048,
    prefix_caching: bool = False,
    dtype: str = "auto",
    **extra: Any,
) -> dict[str, Any]:
    """``SimulEngine.from_engine_args`` keywords: eager, optional LoRA adapter.

    ``dtype`` ``auto`` is the platform's (float32 on the CPU, :mod:`vllm_exposst.precision`),
    written out so records name it.  A merged checkpoint's ``exposst.json`` becomes the
    session defaults when the engine starts (``patch/engine_args.py``).
    ``max_model_len`` is capped at the checkpoint's ``max_position_embeddings``.
    Prefix caching is off unless asked for: then every sentence's count of computed
    tokens is its own work, not what sessions that ran earlier left in the cache.
    """
    path = models.resolve_model(model)
    config = json.loads((path / "config.json").read_text())
    limit = config.get("max_position_embeddings") or max_model_len
    options: dict[str, Any] = dict(
        model=str(path),
        dtype=resolve_dtype(dtype),
        enforce_eager=True,
        max_model_len=min(max_model_len, int(limit)),
        max_num_seqs=max_num_seqs,
        disable_log_stats=True,
        seed=0,
        enable_prefix_caching=prefix_caching,
    )
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter} is not a PEFT adapter (no adapter_config.json)")
        options.update(
            enable_lora=True,
            max_lora_rank=lora_rank(adapter),
            max_loras=1,
            lora_modules={ADAPTER_NAME: str(adapter)},
            lora_target_modules=lora_targets(adapter),
        )
    options.update(extra)
    return options


async def start_engine(options: dict[str, Any]) -> Any:
    """Start a :class:`~vllm_exposst.engine.SimulEngine`; call it on the loop that will use it."""
    from ..engine import SimulEngine

    return SimulEngine.from_engine_args(**dict(options))


def quiet_optional_imports() -> None:
    """Silence the one warning of an optional dependency we never use.

    simuleval imports pydub, which warns at import that ffmpeg is missing; only audio
    needs it.  Call it from an entry point before simuleval is imported.
    """
    warnings.filterwarnings(
        "ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning
    )
