"""Training throughput: the ExPosST layout against the offline layout, same pairs, same run.

Both layouts hold exactly the same tokens per pair (only their order and position
ids differ), so the batches are the same size; the ratio of training tokens per
second (``exposst / offline``, target >= 0.9) shows what the event-order layout
costs.  Each layout's model and data are built once; then short runs of ``--steps``
steps alternate between the layouts (``--repeats`` rounds) and the medians count,
so that a load that changes during the run hits both layouts alike.  Defaults
need nothing outside the repository: a generated word-salad dataset and the tiny
random Llama.

    .venv/bin/python eval/bench_train.py
    .venv/bin/python eval/bench_train.py --model default --pairs 200 --steps 10 \\
        --source ../shared/data/multi30k/train.en --target ../shared/data/multi30k/train.de
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from vllm_exposst.defaults import DEFAULT_SLOT_LEN
from vllm_exposst.evaluation.record import write_record
from vllm_exposst.models import ENGLISH_WORDS, GERMAN_WORDS
from vllm_exposst.training.trainer import TrainConfig, make_trainer, prepare

TARGET_RATIO = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="checkpoint, default, tiny-llama")
    parser.add_argument("--source", type=Path, help="source sentences (default: generated)")
    parser.add_argument("--target", type=Path, help="target sentences, line-aligned")
    parser.add_argument("--pairs", type=int, default=400, help="pairs to use")
    parser.add_argument("--layouts", nargs="+", default=["exposst", "offline"])
    parser.add_argument("--policy", default="wait-k:1-9")
    parser.add_argument("--slot-len", type=int, default=DEFAULT_SLOT_LEN)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (one run per layout)")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
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


def prepared_layouts(args: argparse.Namespace, files: list[str], folder: Path) -> dict:
    """Model, LoRA layers and dataset per layout, built once (loading is not timed)."""
    return {
        layout: prepare(
            TrainConfig(
                train=files,
                output_dir=str(folder / layout),
                model=args.model,
                layout=layout,
                policy=args.policy,
                slot_len=args.slot_len,
                max_steps=args.steps,
                max_pairs=args.pairs,
                batch_tokens=args.batch_tokens,
                save_every=0,
                log_every=max(1, args.steps),
                threads=args.threads,
                progress=False,
            )
        )
        for layout in args.layouts
    }


def one_run(prepared) -> dict:
    """``steps`` optimizer steps with a fresh Trainer; tokens/s of the steps alone."""
    trainer, meter = make_trainer(prepared)
    trainer.train()
    return {
        "layout": prepared.config.layout,
        "steps": trainer.state.global_step,
        "tokens": meter.tokens,
        "seconds": round(meter.seconds, 3),
        "tokens_per_second": round(meter.rate, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.source and args.target:
            files = [str(args.source), str(args.target)]
        else:
            files = generated_pairs(folder, args.pairs)
        prepared = prepared_layouts(args, files, folder)
        for repeat in range(args.repeats):
            order = args.layouts if repeat % 2 == 0 else list(reversed(args.layouts))
            for layout in order:
                run = one_run(prepared[layout])
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"repeat {repeat} {layout:8s} {run['tokens_per_second']:9.1f} tok/s "
                    f"({run['tokens']} tokens, {run['seconds']:.1f} s)",
                    file=sys.stderr,
                )
    median = {
        layout: statistics.median(r["tokens_per_second"] for r in runs if r["layout"] == layout)
        for layout in args.layouts
    }
    ratios = {
        layout: round(median[layout] / median["offline"], 3)
        for layout in args.layouts
        if "offline" in median and median["offline"] > 0
    }
    print(f"\n{'layout':10s} {'median tok/s':>13s} {'vs offline':>11s}")
    for layout in args.layouts:
        ratio = ratios.get(layout)
        print(f"{layout:10s} {median[layout]:13.1f} {ratio if ratio is not None else '-':>11}")
    ratio = ratios.get("exposst")
    if ratio is not None:
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(f"\nexposst / offline = {ratio:.3f} ({verdict} the target >= {TARGET_RATIO})")
    write_record(
        args.out,
        runs,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        model=args.model,
        data=[str(args.source), str(args.target)] if args.source else "generated",
        pairs=args.pairs,
        policy=args.policy,
        slot_len=args.slot_len,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        median_tokens_per_second=median,
        ratio_to_offline=ratios,
        target_ratio=TARGET_RATIO,
    )
    print(f"record: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
