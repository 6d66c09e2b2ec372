"""Recipe ablations of the ExPosST adapter at a reduced budget, measured with the engine.

Each arm is one ``exposst-train`` run on the same sample of training pairs, with the
same seed, steps and batch size; only the arm's own flags differ. After training, the
arm's adapter goes through ``exposst-eval`` (the vLLM engine, exposst mode) on a dev
set at a few wait-k values. The arms answer the questions of the two-stage recipe
(docs/training.md):

    from-offline    stage 2 alone: start from the offline-SFT adapter, wait-k mix 1..9
    from-scratch    the same mix from a fresh LoRA
    offline-share   from-offline with about 30% offline (full-source) examples
    k2-9            from-offline with k in 2..9
    lookahead       from-offline with lookahead labels
    r16             from-scratch at LoRA rank 16 (an offline r8 adapter cannot grow)
    float32         from-offline trained in float32 (the others: bfloat16 autocast), for
                    the trainer's precision default (docs/training.md)
    top15           from-scratch with LoRA on the upper 15 of 30 layers only (the trainer's
                    fastest cut changes what is trained; compare with from-scratch)
    no-dropout      from-offline without LoRA dropout (its random masks cost a fifth of a
                    CPU step), for the trainer's dropout default

Each arm's training also reports its loss on ``--dev-loss-pairs`` dev pairs (the same
pairs and policies for every arm, evaluated in float32 at the end), which separates
arms more finely than BLEU on a hundred sentences.

Arms whose evaluation record exists are not run again, so a series that outlasts a
session goes on in the next one with the same command. The end prints a table and
writes ``OUT/recipe_ablation.json`` and ``OUT/recipe_ablation.png``.

    .venv/bin/python eval/recipe_ablation.py --train runs/train.tsv \\
        --dev ../shared/data/multi30k/val.en ../shared/data/multi30k/val.de \\
        --offline-adapter adapters/offline-smollm2 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from vllm_exposst.evaluation.record import write_record

WAIT_1_9 = ",".join(f"wait-{k}" for k in range(1, 10))
# nine wait-k entries and four offline ones: 4/13 = 31% offline examples
WITH_OFFLINE = WAIT_1_9 + ",offline" * 4
FROM_OFFLINE = ["--init-adapter", "{offline}"]
ARMS: dict[str, list[str]] = {
    "from-offline": FROM_OFFLINE,
    "from-scratch": [],
    "offline-share": [*FROM_OFFLINE, "--policy", WITH_OFFLINE],
    "k2-9": [*FROM_OFFLINE, "--policy", "wait-k:2-9"],
    "lookahead": [*FROM_OFFLINE, "--lookahead-labels"],
    "r16": ["--lora-r", "16", "--lora-alpha", "32"],
    "float32": [*FROM_OFFLINE, "--precision", "float32"],
    "top15": ["--lora-top-layers", "15"],
    "no-dropout": [*FROM_OFFLINE, "--lora-dropout", "0"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="pairs .tsv (source<TAB>target)")
    parser.add_argument("--dev", nargs=2, required=True, metavar=("SRC", "TGT"))
    parser.add_argument("--dev-limit", type=int, default=100, help="dev sentences to decode")
    parser.add_argument("--offline-adapter", required=True, help="stage-1 adapter folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--subset", type=int, default=4000, help="training pairs sampled")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policies", default="wait-1,3,7", help="exposst-eval policies")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-minutes", type=float, help="training time limit per arm")
    parser.add_argument("--dev-loss-pairs", type=int, default=200, help="0: no dev loss")
    parser.add_argument("--note", default="", help="kept in the record (what ran beside)")
    return parser.parse_args(argv)


def sample_pairs(train: Path, size: int, seed: int, out: Path) -> Path:
    """The same ``size`` pairs for every arm: a seeded sample of the file's lines."""
    lines = [line for line in train.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines[:size]) + "\n")
    return out


def train_command(arm: str, pairs: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "vllm_exposst.training.cli", "--model", args.model]
    cmd += ["--pairs", str(pairs), "--layout", "exposst", "--policy", "wait-k:1-9"]
    cmd += ["--slot-len", "8", "--max-steps", str(args.steps), "--lr", str(args.lr)]
    cmd += ["--schedule", "cosine", "--batch-tokens", str(args.batch_tokens)]
    cmd += ["--seed", str(args.seed), "--precision", args.precision]
    cmd += ["--threads", str(args.threads), "--lora-r", "8", "--lora-alpha", "16"]
    cmd += ["--save-every", "0", "--save-dtype", "bfloat16", "--log-every", "10"]
    cmd += ["--no-progress"]
    cmd += ["--max-minutes", str(args.max_minutes)] if args.max_minutes else []
    if args.dev_loss_pairs:  # the dev loss once, at the end; no dev decoding
        cmd += ["--dev-source", args.dev[0], "--dev-target", args.dev[1]]
        cmd += ["--eval-sentences", str(args.dev_loss_pairs), "--eval-decode", "0"]
        cmd += ["--eval-every", "0"]
    # last: the arm's flags win (argparse keeps the last value)
    cmd += [flag.format(offline=args.offline_adapter) for flag in ARMS[arm]]
    return cmd + ["--overwrite", "-o", str(args.out / "adapters" / arm)]


def eval_command(arm: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "vllm_exposst.evaluation.cli", "--model", args.model]
    cmd += ["--adapter", str(args.out / "adapters" / arm), "--modes", "exposst"]
    cmd += ["--policies", args.policies, "--source", args.dev[0], "--target", args.dev[1]]
    cmd += ["--limit", str(args.dev_limit)]
    return cmd + ["--output", str(args.out / "eval" / arm)]


def run_logged(command: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode


def run_arm(arm: str, pairs: Path, args: argparse.Namespace) -> str:
    """Train and evaluate one arm; 'done' (found or finished) or the failing stage."""
    if (args.out / "eval" / arm / "record.json").exists():
        return "done"
    logs = args.out / "logs"
    start = time.monotonic()
    print(f"[{arm}] training ({args.steps} steps), log {logs / (arm + '.train.log')}", flush=True)
    if run_logged(train_command(arm, pairs, args), logs / f"{arm}.train.log") != 0:
        return "train failed"
    print(f"[{arm}] trained in {(time.monotonic() - start) / 60:.1f} min; evaluating", flush=True)
    if run_logged(eval_command(arm, args), logs / f"{arm}.eval.log") != 0:
        return "eval failed"
    print(f"[{arm}] done in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    return "done"


def arm_row(arm: str, out: Path, status: str) -> dict:
    """One arm's training summary and dev results, read back from its own records."""
    row: dict = {"arm": arm, "status": status, "flags": ARMS[arm]}
    meta_path = out / "adapters" / arm / "exposst.json"
    record_path = out / "eval" / arm / "record.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        training = meta["training"]
        row["steps"] = meta["steps"]
        row["train_minutes"] = round(training.get("train_seconds", 0) / 60, 1)
        row["last_loss"] = training.get("last_loss")
        row["dev_loss"] = (meta.get("dev") or {}).get("loss")
        row["exposst_json"] = meta
    if record_path.exists():
        results = json.loads(record_path.read_text())["results"]
        row["dev"] = {r["policy"]: {"BLEU": r["BLEU"], "LAAL": r["LAAL"]} for r in results}
    return row


def print_table(rows: list[dict]) -> None:
    policies = sorted({p for row in rows for p in row.get("dev", {})}, key=policy_k)
    head = f"{'arm':14s} {'status':12s} {'steps':>5s} {'min':>5s} {'loss':>6s} {'dev':>6s}"
    print(head + "".join(f" {p + ' BLEU':>12s} {'LAAL':>5s}" for p in policies))
    for row in rows:
        loss, dev_loss = (
            "-" if row.get(key) is None else f"{row[key]:.3f}" for key in ("last_loss", "dev_loss")
        )
        line = f"{row['arm']:14s} {row['status']:12s} {row.get('steps', '-')!s:>5s}"
        line += f" {row.get('train_minutes', '-')!s:>5s} {loss:>6s} {dev_loss:>6s}"
        for policy in policies:
            result = row.get("dev", {}).get(policy)
            if result:
                line += f" {result['BLEU']:12.2f} {result['LAAL']:5.2f}"
            else:
                line += f" {'-':>12s} {'-':>5s}"
        print(line)


def policy_k(policy: str) -> int:
    return int(policy.split("-")[1]) if policy.startswith("wait-") else 99


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if "dev" in row]
    policies = sorted({p for row in rows for p in row["dev"]}, key=policy_k)
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(policies))]
        heights = [row["dev"].get(p, {}).get("BLEU", 0) for p in policies]
        ax.bar(xs, heights, width, label=row["arm"])
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylabel("BLEU (exposst mode, vLLM)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    pairs = sample_pairs(Path(args.train), args.subset, args.seed, args.out / "train_subset.tsv")
    statuses = {}
    for number, arm in enumerate(args.arms, 1):
        print(f"arm {number}/{len(args.arms)}: {arm}", flush=True)
        statuses[arm] = run_arm(arm, pairs, args)
    rows = [arm_row(arm, args.out, statuses[arm]) for arm in args.arms]
    print_table(rows)
    dev = f"{Path(args.dev[0]).name}[0:{args.dev_limit}]"
    title = f"{args.steps} steps on {args.subset} pairs, dev {dev}"
    plot(rows, args.out / "recipe_ablation.png", title)
    write_record(
        args.out / "recipe_ablation.json",
        rows,
        train=args.train,
        dev=args.dev,
        subset=args.subset,
        steps=args.steps,
        note=args.note,
        wall_seconds=round(time.time() - start, 1),
    )
    return 0 if all(status == "done" for status in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
