"""The adapter's record: weights stored in the asked dtype and ``exposst.json`` (how to run
the adapter, and how it was made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import Prepared
from .data import LayoutDataset, Pair
from .dev_eval import DECODE_MODE
from .progress import ThroughputMeter

SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_adapter_weights(folder: Path, dtype: str) -> None:
    """Store the adapter's floating-point weights as ``dtype`` (vLLM and PEFT cast on load)."""
    if dtype == "float32":
        return
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    cast = {k: v.to(SAVE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, str(path), metadata={"format": "pt"})


def save_weights(prepared: Prepared, out: Path) -> None:
    """The trained weights in ``out``: a PEFT adapter, or (``full``) a checkpoint folder
    with its tokenizer that ``vllm serve`` and ``exposst-eval --model`` load as they are."""
    model, dtype = prepared.model, prepared.config.save_dtype
    if not prepared.config.full:
        model.save_pretrained(out)
        cast_adapter_weights(out, dtype)
        return
    state = {k: v.to(SAVE_DTYPES[dtype]) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state)  # with config.json
    prepared.tokenizer.save_pretrained(out)


def last_eval(history: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """Dev metrics logged at ``step`` (the periodic evaluation may have run there)."""
    found: dict[str, Any] = {}
    for entry in history:
        if entry.get("step") == step:
            found.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    return found


def _dev_record(prepared: Prepared, final: dict[str, Any]) -> dict[str, Any]:
    """Final dev scores and how they were decoded."""
    record: dict[str, Any] = {
        "policy": prepared.inference.spec,
        "decode_mode": DECODE_MODE[prepared.config.layout],
        "sentences": len(prepared.dev_pairs),
    }
    for key in ("loss", "bleu", "exact", "decode_seconds"):
        if f"eval_{key}" in final:
            record[key] = final[f"eval_{key}"]
    return record


def _data_record(files: list[str], pairs: list[Pair], dataset: LayoutDataset) -> dict[str, Any]:
    return {
        "files": [str(Path(f).expanduser().resolve()) for f in files],
        "pairs": len(pairs),
        "examples": len(dataset),
        "skipped": dataset.skipped,
        "tokens": dataset.tokens,
        "mean_tokens": round(dataset.tokens / max(len(dataset), 1), 2),
        "mean_positions": round(dataset.positions / max(len(dataset), 1), 2),
    }


def adapter_meta(
    prepared: Prepared,
    steps: int,
    history: list[dict[str, Any]],
    final: dict[str, Any],
    meter: ThroughputMeter,
) -> dict[str, Any]:
    """The ``exposst.json`` record: how to run the adapter, and how it was made."""
    c = prepared.config
    local = Path(c.model).expanduser()
    losses = [entry["loss"] for entry in history if "loss" in entry]
    data = {"train": _data_record(c.train, prepared.train_pairs, prepared.train_set)}
    if prepared.dev_set is not None and c.dev:
        data["dev"] = _data_record(c.dev, prepared.dev_pairs, prepared.dev_set)
    return {
        "layout": c.layout,
        "policy": "offline" if c.layout == "offline" else c.policy,
        "inference_policy": prepared.inference.spec,
        "slot_len": c.slot_len,
        "lookahead_labels": c.lookahead_labels,
        "refeed": c.refeed and c.layout == "exposst",
        "init_adapter": c.init_adapter,
        "source_lang": c.source_lang,
        "target_lang": c.target_lang,
        "system_prompt": c.system_prompt,
        "base_model": str(local.resolve()) if local.exists() else c.model,
        "base_model_path": str(prepared.model_path.resolve()),
        "data": data,
        "steps": steps,
        "seed": c.seed,
        "full": c.full,
        "lora": None if c.full else _lora_record(prepared.model, c),
        "training": {
            "learning_rate": c.learning_rate,
            "schedule": c.schedule,
            "warmup": c.warmup,
            "epochs": c.epochs,
            "max_steps": c.max_steps,
            "batch_tokens": c.batch_tokens,
            "grad_accum": c.grad_accum,
            "max_length": c.max_length,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "tokens": meter.tokens,
            "train_seconds": round(meter.seconds, 2),
            **meter.rates(),  # pairs, target tokens and all tokens per second
        },
        "dev": _dev_record(prepared, final) if final else None,
    }


def _lora_record(model: Any, c: Any) -> dict[str, Any]:
    """The LoRA shape as trained: the model's own (an ``init_adapter`` brings its own)."""
    peft = getattr(model, "peft_config", {}).get("default")
    if peft is None or c.init_adapter is None:
        return {
            "r": c.lora_r,
            "alpha": c.lora_alpha,
            "dropout": c.lora_dropout,
            "target_modules": list(c.lora_targets),
            "layers_to_transform": getattr(peft, "layers_to_transform", None),
        }
    targets = peft.target_modules
    return {
        "r": peft.r,
        "alpha": peft.lora_alpha,
        "dropout": peft.lora_dropout,
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
        "layers_to_transform": peft.layers_to_transform,
    }
