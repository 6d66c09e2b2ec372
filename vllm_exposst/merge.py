"""``exposst-merge``: a PEFT LoRA adapter merged into its base checkpoint, for serving.

A merged checkpoint runs at the base model's step time (no LoRA kernels per step)
and needs no ``--enable-lora``.  The output folder holds float32 safetensors, the
tokenizer and config, and the adapter's ``exposst.json``, so its session settings
(policy, slot length, layout, languages, refeed) apply to every session of
``vllm serve OUT --scheduler-cls vllm_exposst.scheduler.ExposstScheduler`` and of
``make demo``/``exposst-eval --model OUT`` (``patch/engine_args.py`` reads it).

    exposst-merge adapters/exposst-smollm2 -o out/exposst-smollm2-merged [--model default]

Oracle-and-training layer: imports the core only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from . import models
from .adapter_meta import FILENAME, read_adapter_meta, write_adapter_meta


def merge_adapter(adapter: str | Path, out: str | Path, model: str = "default") -> Path:
    """Write ``model`` + ``adapter`` (merged, float32) and the adapter's record to ``out``."""
    import torch
    from peft import PeftModel

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} is not a PEFT adapter (no adapter_config.json)")
    base_path = models.resolve_model(model)
    base, tokenizer = models.load(base_path)  # float32, as the reference decoder loads it
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged = merged.to(torch.float32)
    merged.config.dtype = torch.float32  # what vLLM's --dtype auto reads
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta: dict[str, Any] = read_adapter_meta(adapter)
    meta["merged"] = {
        "adapter": str(adapter.resolve()),
        "adapter_fingerprint": models.weights_fingerprint(adapter),
        "base_model_path": str(base_path),
        "weights_fingerprint": models.weights_fingerprint(base_path),
    }
    write_adapter_meta(out, meta)
    return out


def cached_merge(adapter: str | Path, model: str = "default") -> Path:
    """``adapter`` merged into ``model``, kept in the cache and merged again whenever the
    adapter's or the base's weights differ from the copy's (an adapter retrained in place
    must not be compared with its old self)."""
    adapter = Path(adapter)
    base_path = models.resolve_model(model)
    out = models.cache_root() / "merged" / adapter.resolve().name
    wanted = (models.weights_fingerprint(adapter), models.weights_fingerprint(base_path))
    if (out / "config.json").is_file() and (out / FILENAME).is_file():
        made = read_adapter_meta(out).get("merged") or {}
        if (made.get("adapter_fingerprint"), made.get("weights_fingerprint")) == wanted:
            return out
    if out.exists():
        shutil.rmtree(out)
    return merge_adapter(adapter, out, str(base_path))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exposst-merge", description=__doc__.split("\n")[0])
    parser.add_argument("adapter", type=Path, help="PEFT LoRA adapter folder (with exposst.json)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    parser.add_argument(
        "--model", default="default", help="base checkpoint: folder, 'default' or tiny-llama"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        if not args.overwrite:
            print(f"exposst-merge: {args.output} is not empty (--overwrite)", file=sys.stderr)
            return 2
        shutil.rmtree(args.output)
    try:
        out = merge_adapter(args.adapter, args.output, args.model)
    except (OSError, ValueError) as err:
        print(f"exposst-merge: {err}", file=sys.stderr)
        return 2
    settings = {k: v for k, v in read_adapter_meta(out).items() if k != "merged"}
    print(
        f"merged {args.adapter} into {out}\n"
        f"serve: vllm serve {out} --scheduler-cls vllm_exposst.scheduler.ExposstScheduler\n"
        f"{FILENAME}: {json.dumps({k: settings[k] for k in list(settings)[:6]})}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
