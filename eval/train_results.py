"""Train the adapters of the results page (docs/results.md) with ``exposst-train``.

One base model, one data set, one budget; the runs differ only in layout, policy
mix and ``slot_len``:

    offline         offline SFT (the quality ceiling, and the model the recompute
                    and shift baselines run at test time)
    exposst         ExPosST layout, wait-k mix k in 1..9, slot_len 8 (the default adapter)
    shift           shift layout (conversational baseline), same mix
    *-la            the same with lookahead labels (an ablation)
    exposst-la-slotN  ExPosST with lookahead labels at slot_len N (slot_len sensitivity)
    offline-cpu, offline-cpu-2   the shipped offline-SFT adapter, in two CPU stages
    exposst-cpu     the shipped ExPosST adapter: stage 2 from offline-cpu-2 (the recipe)

Each run is an ``exposst-train`` process with its own log file
(``OUT/logs/NAME.log``); ``--parallel`` runs several at once (on a GPU a 135M
model leaves room for several).  The end prints a table and writes
``OUT/train_results.json`` (command, machine, date, versions, each run's
``exposst.json``).

    .venv/bin/python eval/train_results.py --model default \\
        --train ../shared/data/results/train.tsv --out runs/results --parallel 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from vllm_exposst.evaluation.record import write_record

SIMUL_MIX = "wait-k:1-9"
EXPOSST = ["--layout", "exposst", "--policy", SIMUL_MIX]
LOOKAHEAD = ["--lookahead-labels"]
RUNS: dict[str, list[str]] = {
    "offline": ["--layout", "offline"],
    "exposst": [*EXPOSST, "--slot-len", "8"],
    "shift": ["--layout", "shift", "--policy", SIMUL_MIX],
    # the same with lookahead labels (docs/training.md), and the slot_len sensitivity
    "exposst-la": [*EXPOSST, "--slot-len", "8", *LOOKAHEAD],
    "shift-la": ["--layout", "shift", "--policy", SIMUL_MIX, *LOOKAHEAD],
    "exposst-la-slot2": [*EXPOSST, "--slot-len", "2", *LOOKAHEAD],
    "exposst-la-slot4": [*EXPOSST, "--slot-len", "4", *LOOKAHEAD],
    "exposst-la-slot16": [*EXPOSST, "--slot-len", "16", *LOOKAHEAD],
    # the shipped offline-SFT baseline (adapters/offline-smollm2), as trained on the 2-core
    # CPU: small batches, more steps (these flags win over the shared ones)
    "offline-cpu": [
        "--layout", "offline", "--max-steps", "250", "--batch-tokens", "2048", "--lr", "3e-4",
        "--lora-r", "8", "--lora-alpha", "16", "--eval-sentences", "200", "--eval-decode", "0",
        "--eval-every", "100", "--save-every", "50", "--log-every", "5", "--threads", "1",
    ],
    # its second stage: from the first, another draw of batches (seed 1), bf16 autocast
    "offline-cpu-2": [
        "--layout", "offline", "--init-adapter", "{out}/offline-cpu", "--seed", "1",
        "--max-steps", "850", "--batch-tokens", "2048", "--lr", "3e-4", "--lora-r", "8",
        "--lora-alpha", "16", "--precision", "bfloat16", "--eval-sentences", "200",
        "--eval-decode", "0", "--eval-every", "250", "--save-every", "100", "--log-every", "10",
        "--threads", "2",
    ],
    # the shipped ExPosST adapter (adapters/exposst-smollm2): stage 2 from the offline-SFT
    # adapter, refeed layout, wait-k 1..9 with lookahead labels (the recipe ablations'
    # choice, docs/results.md), another draw of batches (seed 2)
    "exposst-cpu": [
        *EXPOSST, "--slot-len", "8", *LOOKAHEAD, "--init-adapter", "{out}/offline-cpu-2",
        "--seed", "2", "--max-steps", "750", "--batch-tokens", "2048", "--lr", "3e-4",
        "--lora-r", "8", "--lora-alpha", "16", "--precision", "bfloat16",
        "--eval-sentences", "200", "--eval-decode", "0", "--eval-every", "250",
        "--save-every", "50", "--log-every", "10", "--threads", "2",
    ],
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="checkpoint folder, default")
    parser.add_argument("--train", nargs="+", required=True, help="pairs .tsv, or SRC TGT")
    parser.add_argument("--out", type=Path, required=True, help="folder for adapters and logs")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev", nargs=2, metavar=("SRC", "TGT"), help="dev files (dev loss)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run")
    parser.add_argument("--max-minutes", type=float, help="training time limit per run")
    parser.add_argument("--note", default="", help="kept in the record (e.g. where it ran)")
    return parser.parse_args(argv)


def train_command(name: str, args: argparse.Namespace) -> list[str]:
    files = args.train
    if len(files) == 1:
        data = ["--pairs", files[0]]
    else:
        data = ["--source", files[0], "--target", files[1]]
    cmd = [sys.executable, "-m", "vllm_exposst.training.cli", "--model", args.model, *data]
    if args.dev:
        cmd += ["--dev-source", args.dev[0], "--dev-target", args.dev[1]]
    cmd += ["--epochs", str(args.epochs), "--lr", str(args.lr), "--schedule", "cosine"]
    cmd += ["--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha)]
    cmd += ["--batch-tokens", str(args.batch_tokens), "--seed", str(args.seed)]
    cmd += ["--save-every", "0", "--log-every", "20", "--no-progress", "--save-dtype", "bfloat16"]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--max-minutes", str(args.max_minutes)] if args.max_minutes else []
    # last: a run's own flags win (argparse keeps the last value); {out} is --out
    cmd += [flag.format(out=args.out) for flag in RUNS[name]]
    return cmd + ["--overwrite", "-o", str(args.out / name)]


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][-100:] if lines else ""


def run_all(args: argparse.Namespace) -> dict[str, int]:
    """Start the runs, ``--parallel`` at a time; print each one's last log line every 30 s."""
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting, running, codes = list(args.runs), {}, {}
    last_report = 0.0
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name = waiting.pop(0)
            command = train_command(name, args)
            log = (logs / f"{name}.log").open("w")
            running[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(f"started {name}: {' '.join(command[1:])}", flush=True)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                codes[name] = proc.returncode
                del running[name]
                print(f"finished {name} (exit {proc.returncode})", flush=True)
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            for name in running:
                print(f"  {name}: {last_line(logs / f'{name}.log')}", flush=True)
        time.sleep(2)
    return codes


def summary(args: argparse.Namespace, codes: dict[str, int]) -> list[dict]:
    rows = []
    header = "run              exit  steps/plan  stopped  loss first->last   tok/s  tok/ex  pos/ex"
    print(header)
    for name in args.runs:
        meta_path = args.out / name / "exposst.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        rows.append({"run": name, "exit": codes.get(name), "meta": meta})
        if meta is None:
            print(f"{name:16s} {codes.get(name)!s:>4s}  (no adapter)")
            continue
        t, d = meta["training"], meta["data"]["train"]
        steps = f"{meta['steps']:>5d}/{t.get('planned_steps')!s:<5s}"
        stopped = str(t.get("stopped_by_time_limit"))
        losses = f"{t['first_loss']:.3f} -> {t['last_loss']:.3f}"
        print(
            f"{name:16s} {codes.get(name)!s:>4s}  {steps}  {stopped:7s}  {losses}"
            f"  {t['tokens_per_second']:>7.0f}  {d['mean_tokens']:6.1f}  {d['mean_positions']:6.1f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    codes = run_all(args)
    rows = summary(args, codes)
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    write_record(
        args.out / "train_results.json",
        rows,
        device=device,
        note=args.note,
        wall_seconds=round(time.time() - start, 1),
    )
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
