"""Every check of a training run's inputs, before a step is taken (and the names they use).

Option values need nothing (:func:`check_options`); the output folder, the checkpoint
to resume and the model come next (:func:`check_output`, :func:`resume_checkpoint`,
:func:`resolve_model_path`), then the LoRA targets and layers of the loaded model
(:func:`check_lora_targets`, :func:`lora_layers`).  All raise
:class:`~vllm_exposst.training.data.TrainingInputError` with a message for the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import models
from ..defaults import TRAIN_MODES
from .config import ATTENTIONS, DROPOUT_MASKS, FORWARDS, PRECISIONS, TrainConfig
from .data import TrainingInputError
from .record import SAVE_DTYPES

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt")
CHECKPOINTS = "checkpoints"  # inside the output folder
# what a finished run leaves in its output folder: a PEFT adapter, or a --full checkpoint
SAVED_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors")


def check_options(config: TrainConfig) -> None:
    """Option values that need no file or model."""
    if config.layout not in TRAIN_MODES:
        raise TrainingInputError(f"unknown layout {config.layout!r}; expected one of {TRAIN_MODES}")
    if config.save_dtype not in SAVE_DTYPES:
        raise TrainingInputError(
            f"unknown save dtype {config.save_dtype!r}; expected one of {list(SAVE_DTYPES)}"
        )
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise TrainingInputError(f"max_minutes must be > 0, got {config.max_minutes!r}")
    if config.precision not in PRECISIONS:
        raise TrainingInputError(
            f"unknown precision {config.precision!r}; expected one of {PRECISIONS}"
        )
    if config.forward not in FORWARDS:
        raise TrainingInputError(f"unknown forward {config.forward!r}; expected one of {FORWARDS}")
    if config.attention not in ATTENTIONS:
        raise TrainingInputError(
            f"unknown attention {config.attention!r}; expected one of {ATTENTIONS}"
        )
    if config.dropout_masks not in DROPOUT_MASKS:
        raise TrainingInputError(
            f"unknown dropout masks {config.dropout_masks!r}; expected one of {DROPOUT_MASKS}"
        )
    if config.full and config.init_adapter:
        raise TrainingInputError(
            "--full trains every weight of --model; to continue a full run give its folder as "
            "--model (or --resume), not --init-adapter"
        )
    if config.full and config.lora_top_layers is not None:
        raise TrainingInputError("--lora-top-layers is a LoRA option; --full trains every layer")
    if config.lora_top_layers is not None and (
        not isinstance(config.lora_top_layers, int) or config.lora_top_layers < 1
    ):
        raise TrainingInputError(
            f"lora_top_layers must be an integer >= 1, got {config.lora_top_layers!r}"
        )
    if config.schedule not in SCHEDULES:
        raise TrainingInputError(
            f"unknown schedule {config.schedule!r}; expected one of {SCHEDULES}"
        )
    positive = {
        "slot_len": config.slot_len,
        "lora_r": config.lora_r,
        "batch_tokens": config.batch_tokens,
        "grad_accum": config.grad_accum,
        "max_length": config.max_length,
        "log_every": config.log_every,
        "eval_sentences": config.eval_sentences,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise TrainingInputError(f"{name} must be an integer >= 1, got {value!r}")
    if config.max_length > config.batch_tokens:
        raise TrainingInputError(
            f"max_length ({config.max_length}) is larger than batch_tokens ({config.batch_tokens})"
        )
    if not 0.0 <= config.lora_dropout < 1.0:
        raise TrainingInputError(f"lora_dropout must be in [0, 1), got {config.lora_dropout}")
    if config.learning_rate <= 0:
        raise TrainingInputError(f"learning_rate must be > 0, got {config.learning_rate}")
    if config.max_steps <= 0 and config.epochs <= 0:
        raise TrainingInputError("give epochs > 0 or max_steps > 0")
    if not config.lora_targets:
        raise TrainingInputError("no LoRA target modules given")
    if "all-linear" in config.lora_targets and len(config.lora_targets) > 1:
        raise TrainingInputError("all-linear already names every linear layer: give it alone")
    if config.max_pairs is not None and config.max_pairs < 1:
        raise TrainingInputError(f"max_pairs must be >= 1, got {config.max_pairs}")
    if config.eval_decode is not None and config.eval_decode < 0:
        raise TrainingInputError(f"eval_decode must be >= 0, got {config.eval_decode}")
    for name in ("eval_every", "save_every", "keep_checkpoints"):
        if getattr(config, name) < 0:
            raise TrainingInputError(f"{name} must be >= 0, got {getattr(config, name)}")


def check_lora_targets(model: Any, targets: list[str]) -> None:
    """Every target must name linear layers of this model (PEFT's suffix match)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    known = sorted({n.rsplit(".", 1)[-1] for n in linear})
    missing = [
        t
        for t in targets
        if t != "all-linear" and not any(n == t or n.endswith(f".{t}") for n in linear)
    ]
    if missing:
        raise TrainingInputError(
            f"unknown LoRA target module(s) {missing} for this model; its linear layers are "
            f"{known} (or use all-linear)"
        )


def lora_layers(model: Any, top: int | None) -> dict[str, Any]:
    """PEFT arguments that put LoRA on the upper ``top`` layers only (all layers: none)."""
    if top is None:
        return {}
    count = getattr(model.config, "num_hidden_layers", None)
    if count is None or top > count:
        raise TrainingInputError(f"lora_top_layers={top}, but the model has {count} layers")
    return {"layers_to_transform": list(range(count - top, count)), "layers_pattern": "layers"}


def check_output(config: TrainConfig) -> Path:
    out = Path(config.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainingInputError(f"output folder {out} is a file")
    saved = any((out / name).exists() for name in SAVED_FILES)
    used = saved or any((out / CHECKPOINTS).glob("checkpoint-*"))
    if used and config.resume is None and not config.overwrite:
        raise TrainingInputError(
            f"output folder {out} already holds an adapter or checkpoints; "
            "resume, pick another folder or allow overwriting"
        )
    return out


def resume_checkpoint(config: TrainConfig, out: Path) -> str | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        from transformers.trainer_utils import get_last_checkpoint

        folder = out / CHECKPOINTS
        last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        if last is None:
            raise TrainingInputError(f"nothing to resume: no checkpoint in {folder}")
        return last
    path = Path(config.resume).expanduser()
    if not (path / "trainer_state.json").exists():
        raise TrainingInputError(f"{path} is not a training checkpoint (no trainer_state.json)")
    return str(path)


def resolve_model_path(config: TrainConfig) -> Path:
    try:
        return models.resolve_model(config.model, config.cache_dir)
    except FileNotFoundError as err:
        raise TrainingInputError(str(err)) from None
