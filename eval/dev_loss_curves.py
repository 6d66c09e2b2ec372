"""Dev loss against tokens trained, for ``exposst-train`` outputs (their train_log.json).

The cheap learning curve: the trainer's own dev loss every ``--eval-every`` steps, no
decoding.  Draws ``OUT.png`` (x: training tokens seen, so runs with other step sizes
compare) and writes ``OUT.json`` (the points, and each run's record); prints a table.

    .venv/bin/python eval/dev_loss_curves.py runs/general/r64long adapters/x \\
        --labels "r64, 856 steps" "x" --out docs/results/general_stage1_dev_loss

``--consecutive``: each run continues the one before (``--init-adapter``), so its
steps and tokens count on from the previous run's last point: one curve, one
colour per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vllm_exposst.evaluation.record import write_record


def curve(run: Path) -> list[tuple[int, int, float]]:
    """(step, tokens seen, dev loss) of every dev evaluation in the run's log."""
    log = json.loads((run / "train_log.json").read_text())
    return [
        (row["step"], row["num_input_tokens_seen"], round(row["eval_loss"], 4))
        for row in log
        if "eval_loss" in row
    ]


def chained(curves: dict[str, list[tuple[int, int, float]]]) -> None:
    """Shift each run's steps and tokens by the totals of the runs before it."""
    steps = tokens = 0
    for label, points in curves.items():
        curves[label] = [(steps + s, tokens + t, loss) for s, t, loss in points]
        if points:
            steps, tokens = curves[label][-1][0], curves[label][-1][1]


def draw(curves: dict[str, list[tuple[int, int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in curves.items():
        ax.plot([t / 1e6 for _, t, _ in points], [loss for *_, loss in points], "o-", label=label)
    ax.set_xlabel("training tokens seen (millions)")
    ax.set_ylabel("dev loss (iwslt2017 dev [0:100])")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="exposst-train output folders")
    parser.add_argument("--labels", nargs="*", help="one per run (default: folder names)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.png and OUT.json")
    parser.add_argument(
        "--consecutive", action="store_true", help="each run continues the one before"
    )
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one label per run")
    curves = {label: curve(run) for label, run in zip(labels, args.runs, strict=True)}
    if args.consecutive:
        chained(curves)
    print(f"{'run':<28} {'steps':>6} {'tokens':>10} {'dev loss':>9}")
    for label, points in curves.items():
        for step, tokens, loss in points:
            print(f"{label:<28} {step:>6} {tokens:>10} {loss:>9.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(curves, args.out.with_suffix(".png"))
    runs: dict[str, Any] = {
        label: {
            "folder": str(run),
            "points": [dict(zip(("step", "tokens", "dev_loss"), p)) for p in curves[label]],
            "exposst": json.loads((run / "exposst.json").read_text()),
        }
        for label, run in zip(labels, args.runs, strict=True)
    }
    write_record(args.out.with_suffix(".json"), runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
