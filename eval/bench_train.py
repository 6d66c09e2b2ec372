"""Training throughput: the plain forward against the fast one (and layouts), same pairs, one run.

Each *variant* is
``forward/precision[/eager|/sdpa][/nodrop|/torchmask|/fastmask][/topN][/compile]``: the forward
(``plain`` = ``model(**batch)``, ``label-head`` = the LM head only at labels, ``fast`` =
that plus the shared prompt prefix once per batch; training/forward.py), the precision
(``float32``, ``bfloat16`` = CPU autocast), optionally the attention kernel (default: the
trainer's ``auto``, eager for the fast forwards on the CPU, the model's sdpa for plain),
optionally LoRA dropout off for the run (``nodrop``: what dropout's random masks cost) or
its masks drawn by ``bernoulli_`` or the fast way (default: the trainer's ``auto``),
optionally LoRA on the upper N layers only, and optionally each decoder layer compiled
(``--compile``; its warm-up, three steps, compiles and is timed apart).  Models and data
are built once per layout, LoRA shape and compilation; then short runs of
``--steps`` optimizer steps alternate between the variants (``--repeats`` rounds, the
order reversed every other round) and the medians count, so a load that changes during
the run hits every variant alike.  Reported per variant: pairs/s, target tokens/s (the
labelled positions: target words, stop and lookahead labels), all non-padding tokens/s,
the ratio to the first variant, each cut's own ratio (to the row before it), and the
process's resident memory after the variant's runs.  Defaults need nothing outside the
repository: generated word-salad pairs and the tiny random Llama.

    .venv/bin/python eval/bench_train.py
    D=../shared/data/multi30k
    .venv/bin/python eval/bench_train.py --model default --source $D/train.en \\
        --target $D/train.de --pairs 2000 --steps 6 --repeats 3 --threads 2 \\
        --lora-r 8 --lookahead-labels --policy wait-k:2-9 --batch-tokens 2048 \\
        --variants plain/float32 label-head/float32 fast/float32 plain/bfloat16 \\
        fast/bfloat16 fast/bfloat16/top15 --out docs/bench/train_fast.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from vllm_exposst.defaults import DEFAULT_SLOT_LEN
from vllm_exposst.evaluation.record import write_record
from vllm_exposst.models import ENGLISH_WORDS, GERMAN_WORDS
from vllm_exposst.training.config import FORWARDS, PRECISIONS
from vllm_exposst.training.dropout import lora_dropouts
from vllm_exposst.training.forward import causal_lm
from vllm_exposst.training.trainer import TrainConfig, dropout_masks, make_trainer, prepare

DEFAULT_VARIANTS = ["plain/float32", "label-head/float32", "fast/float32", "fast/bfloat16"]


@dataclass(frozen=True)
class Variant:
    forward: str
    precision: str
    top_layers: int | None = None
    compile: bool = False
    attention: str = "auto"
    dropout: str = "auto"  # auto | nodrop | torchmask | fastmask

    @classmethod
    def parse(cls, spec: str) -> Variant:
        parts = spec.split("/")
        if len(parts) < 2 or parts[0] not in FORWARDS or parts[1] not in PRECISIONS:
            raise argparse.ArgumentTypeError(
                f"variant {spec!r}: expected forward/precision[/eager|sdpa]"
                f"[/nodrop|torchmask|fastmask][/topN][/compile], "
                f"forward in {FORWARDS}, precision in {PRECISIONS}"
            )
        top, compiled, attention, dropout = None, False, "auto", "auto"
        for part in parts[2:]:
            later = top is not None or compiled
            if part in ("eager", "sdpa") and attention == dropout == "auto" and not later:
                attention = part
            elif part in ("nodrop", "torchmask", "fastmask") and dropout == "auto" and not later:
                dropout = part
            elif part == "compile" and not compiled:
                compiled = True
            elif part.startswith("top") and part[3:].isdigit() and top is None and not compiled:
                top = int(part[3:])
            else:
                raise argparse.ArgumentTypeError(
                    f"variant {spec!r}: after forward/precision come eager or sdpa, "
                    "nodrop, torchmask or fastmask, topN, then compile"
                )
        return cls(parts[0], parts[1], top, compiled, attention, dropout)

    @property
    def shape(self) -> tuple[int | None, bool]:
        """What needs a model of its own: the LoRA layers, and compiled layers."""
        return self.top_layers, self.compile

    def __str__(self) -> str:
        attention = "" if self.attention == "auto" else f"/{self.attention}"
        attention += "" if self.dropout == "auto" else f"/{self.dropout}"
        top = f"/top{self.top_layers}" if self.top_layers else ""
        compiled = "/compile" if self.compile else ""
        return f"{self.forward}/{self.precision}{attention}{top}{compiled}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="checkpoint, default, tiny-llama")
    parser.add_argument("--source", type=Path, help="source sentences (default: generated)")
    parser.add_argument("--target", type=Path, help="target sentences, line-aligned")
    parser.add_argument("--pairs", type=int, default=400, help="pairs to use")
    parser.add_argument("--layouts", nargs="+", default=["exposst"])
    parser.add_argument(
        "--variants", nargs="+", type=Variant.parse, default=[*map(Variant.parse, DEFAULT_VARIANTS)]
    )
    parser.add_argument("--policy", default="wait-k:1-9")
    parser.add_argument("--slot-len", type=int, default=DEFAULT_SLOT_LEN)
    parser.add_argument("--lookahead-labels", action="store_true")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (one run per variant)")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--beside", default="nothing", help="what else ran (for the record)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/train.json"))
    return parser.parse_args(argv)


def generated_pairs(folder: Path, count: int) -> list[str]:
    """Word-salad pairs over the tiny tokenizer's words (deterministic)."""
    rng = random.Random(0)
    lines = [
        (
            " ".join(rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(5, 15))),
            " ".join(rng.choice(GERMAN_WORDS) for _ in range(rng.randint(5, 15))),
        )
        for _ in range(count)
    ]
    source, target = folder / "bench.en", folder / "bench.de"
    source.write_text("".join(f"{s}\n" for s, _ in lines))
    target.write_text("".join(f"{t}\n" for _, t in lines))
    return [str(source), str(target)]


def prepared_models(args: argparse.Namespace, files: list[str], folder: Path) -> dict:
    """Model, LoRA layers and dataset per (layout, LoRA layers, compiled), built once
    (not timed)."""
    shapes = {(layout, *v.shape) for layout in args.layouts for v in args.variants}
    return {
        (layout, top, compiled): prepare(
            TrainConfig(
                train=files,
                output_dir=str(folder / f"{layout}-{top}"),
                model=args.model,
                layout=layout,
                policy=args.policy,
                slot_len=args.slot_len,
                lookahead_labels=args.lookahead_labels,
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                lora_top_layers=top,
                compile=compiled,
                max_steps=args.steps,
                max_pairs=args.pairs,
                batch_tokens=args.batch_tokens,
                save_every=0,
                log_every=max(1, args.steps),
                threads=args.threads,
                progress=False,
            )
        )
        for layout, top, compiled in sorted(shapes, key=str)
    }


def resident_mib() -> float:
    """The process's resident memory now, not its peak."""
    return psutil.Process().memory_info().rss / 2**20


def set_lora_dropout(model, p: float | None) -> float | None:
    """Set the LoRA dropout probability of every adapted layer (None: leave it); the old one."""
    old = None
    for module in lora_dropouts(model):
        old = module.p
        if p is not None:
            module.p = p
    return old


def one_run(prepared, variant: Variant, steps: int | None = None) -> dict:
    """``steps`` optimizer steps with a fresh Trainer; rates of the steps alone."""
    config = prepared.config
    config.forward, config.precision = variant.forward, variant.precision
    config.attention = variant.attention
    masks = {"torchmask": "torch", "fastmask": "fast"}
    config.dropout_masks = masks.get(variant.dropout, "auto")
    planned, config.max_steps = config.max_steps, steps or config.max_steps
    trainer, meter = make_trainer(prepared)
    kept = set_lora_dropout(prepared.model, 0.0 if variant.dropout == "nodrop" else None)
    used = set_lora_dropout(prepared.model, None)
    trainer.train()
    set_lora_dropout(prepared.model, kept)
    config.max_steps = planned
    return {
        "layout": prepared.config.layout,
        "variant": str(variant),
        "forward": trainer.forward,
        "bf16": trainer.cpu_bf16,
        "attention": causal_lm(prepared.model).config._attn_implementation,
        "dropout_masks": dropout_masks(config),  # as the trainer resolved it
        "lora_dropout": used,
        "steps": trainer.state.global_step,
        "pairs": meter.pairs,
        "target_tokens": meter.target_tokens,
        "tokens": meter.tokens,
        "seconds": round(meter.seconds, 3),
        **meter.rates(),
        "resident_mib": round(resident_mib(), 1),
    }


def summary(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for layout in args.layouts:
        first = previous = None
        for variant in map(str, args.variants):
            mine = [r for r in runs if r["layout"] == layout and r["variant"] == variant]
            row = {
                "layout": layout,
                "variant": variant,
                **{
                    key: statistics.median(r[key] for r in mine)
                    for key in ("pairs_per_second", "target_tokens_per_second", "tokens_per_second")
                },
                "resident_mib": max(r["resident_mib"] for r in mine),
            }
            first = first or row
            row["x_first"] = round(row["pairs_per_second"] / first["pairs_per_second"], 3)
            row["x_previous"] = round(
                row["pairs_per_second"] / (previous or row)["pairs_per_second"], 3
            )
            rows.append(row)
            previous = row
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.source and args.target:
            files = [str(args.source), str(args.target)]
        else:
            files = generated_pairs(folder, args.pairs)
        prepared = prepared_models(args, files, folder)
        warmups = []
        for layout in args.layouts:  # warm-up, not counted: one step, three to compile
            for variant in args.variants:
                warm = one_run(
                    prepared[(layout, *variant.shape)], variant, 3 if variant.compile else 1
                )
                warmups.append(warm)
        for repeat in range(args.repeats):
            order = [(lay, v) for lay in args.layouts for v in args.variants]
            for layout, variant in order if repeat % 2 == 0 else reversed(order):
                run = one_run(prepared[(layout, *variant.shape)], variant)
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"repeat {repeat} {layout:8s} {str(variant):24s} "
                    f"{run['pairs_per_second']:7.2f} pairs/s "
                    f"{run['target_tokens_per_second']:7.1f} target tok/s ({run['seconds']:.1f} s)",
                    file=sys.stderr,
                )
    rows = summary(runs, args)
    print(
        f"\n{'layout':8s} {'variant':24s} {'pairs/s':>8s} {'tgt tok/s':>10s} {'tok/s':>8s} "
        f"{'x first':>8s} {'x prev':>7s} {'RSS MiB':>8s}"
    )
    for r in rows:
        print(
            f"{r['layout']:8s} {r['variant']:24s} {r['pairs_per_second']:8.2f} "
            f"{r['target_tokens_per_second']:10.1f} {r['tokens_per_second']:8.1f} "
            f"{r['x_first']:8.2f} {r['x_previous']:7.2f} {r['resident_mib']:8.0f}"
        )
    write_record(
        args.out,
        runs,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        model=args.model,
        data=[str(args.source), str(args.target)] if args.source else "generated",
        pairs=args.pairs,
        policy=args.policy,
        slot_len=args.slot_len,
        lookahead_labels=args.lookahead_labels,
        lora_r=args.lora_r,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        threads=torch.get_num_threads(),
        beside=args.beside,
        summary=rows,
        warmup_seconds={f"{w['layout']} {w['variant']}": w["seconds"] for w in warmups},
        units={
            "pairs_per_second": "training pairs (examples) per second of training steps",
            "target_tokens_per_second": "labelled positions (target, stop, lookahead) per second",
            "tokens_per_second": "all non-padding tokens (prompt, source, target) per second",
        },
    )
    print(f"record: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
