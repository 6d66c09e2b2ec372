"""Learning curves of training runs: dev BLEU from the vLLM engine at every kept checkpoint.

Each run folder is an ``exposst-train`` output with ``--keep-checkpoints 0`` (every
checkpoint kept).  Every checkpoint and the final output go through ``exposst-eval`` (one
process each: the in-process vLLM engine, greedy, float32 on the CPU) on the same dev
sentences; a LoRA run is served as an adapter, a ``--full`` run as the model.  A
checkpoint whose record exists is not evaluated again, so the command can be rerun as
runs grow.  The x axis is training time: a checkpoint's step times the run's mean
seconds per step (``exposst.json``: ``train_seconds / steps``), so arms given equal
minutes end at the same x.  Prints a table, draws ``OUT/learning_curves.png`` and
writes ``OUT/learning_curves.json``.

    .venv/bin/python eval/learning_curves.py --runs runs/general/r8 runs/general/r64 \\
        runs/general/full --source dev.en --target dev.de --limit 100 --mode offline \\
        --out runs/general/curves
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vllm_exposst.evaluation.record import write_record

ROOT = Path(__file__).resolve().parent.parent


def points(run: Path) -> list[tuple[int, Path]]:
    """(step, folder) for every kept checkpoint and the final output, by step."""
    meta = json.loads((run / "exposst.json").read_text())
    found = {meta["steps"]: run}
    for folder in (run / "checkpoints").glob("checkpoint-*"):
        found.setdefault(int(folder.name.rsplit("-", 1)[1]), folder)
    return sorted(found.items())


def is_full(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() and not (folder / "adapter_config.json").exists()


def evaluate(folder: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One ``exposst-eval`` run of ``folder`` (adapter or model) on the dev sentences."""
    record = out / "record.json"
    if not record.exists():
        weights = ["--model", str(folder)] if is_full(folder) else ["--adapter", str(folder)]
        command = [
            str(ROOT / ".venv/bin/exposst-eval"),
            *weights,
            "--source", args.source, "--target", args.target,
            "--start", str(args.start), "--limit", str(args.limit),
            "--modes", args.mode, "--policies", args.policy,
            "--output", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True)
    return json.loads(record.read_text())["results"][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="exposst-train output folders")
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--mode", default="offline", help="exposst-eval mode (offline for stage 1)")
    p.add_argument("--policy", default="wait-3", help="ignored by the offline mode")
    p.add_argument("--out", required=True)
    p.add_argument("--beside", default="nothing", help="what else ran (for the record)")
    args = p.parse_args(argv)
    out = Path(args.out)
    curves: dict[str, list[dict[str, Any]]] = {}
    for run in map(Path, args.runs):
        meta = json.loads((run / "exposst.json").read_text())
        per_step = meta["training"]["train_seconds"] / max(meta["steps"], 1)
        rows = curves.setdefault(run.name, [])
        for step, folder in points(run):
            result = evaluate(folder, args, out / run.name / f"step-{step}")
            rows.append(
                {
                    "step": step,
                    "minutes": round(step * per_step / 60, 2),
                    "BLEU": round(result["BLEU"], 2),
                    "chrF": round(result["chrF"], 2),
                    "folder": str(folder),
                }
            )
            row = rows[-1]
            print(
                f"{run.name:>10} step {step:>5} {row['minutes']:>7.1f} min "
                f"BLEU {row['BLEU']:>6.2f} chrF {row['chrF']:>6.2f}",
                flush=True,
            )
    write_record(
        out / "learning_curves.json",
        curves,
        dev={"source": args.source, "start": args.start, "sentences": args.limit},
        mode=args.mode,
        policy=args.policy,
        beside=args.beside,
    )
    draw(curves, out / "learning_curves.png", f"dev BLEU ({args.mode}, {args.limit} sentences)")
    return 0


def draw(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        ax.plot([r["minutes"] for r in rows], [r["BLEU"] for r in rows], marker="o", label=name)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
