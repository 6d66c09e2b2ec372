"""``exposst-train``: policy-consistent LoRA fine-tuning from the command line.

    exposst-train --model default --source train.en --target train.de \\
        --dev-source val.en --dev-target val.de --policy wait-k:1-9 -o adapters/wait-mix

Writes a PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``) and
``exposst.json`` into the output folder.  Bad inputs stop the run before training
with ``exposst-train: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .. import models
from ..defaults import DEFAULT_REFEED, DEFAULT_SLOT_LEN, TRAIN_MODES
from .checks import SCHEDULES
from .config import ATTENTIONS, DEFAULT_TARGETS, DROPOUT_MASKS, FORWARDS, PRECISIONS, TrainConfig
from .data import TrainingInputError

PROG = "exposst-train"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--source", help="training sources, one sentence per line")
    data.add_argument("--target", help="training targets, line-aligned with --source")
    data.add_argument("--pairs", help="training pairs as .tsv (source<TAB>target) or .jsonl")
    data.add_argument("--dev-source", help="dev sources (dev loss and BLEU during training)")
    data.add_argument("--dev-target", help="dev targets, line-aligned with --dev-source")
    data.add_argument("--dev-pairs", help="dev pairs as .tsv or .jsonl")
    data.add_argument("--max-pairs", type=int, help="use only the first N training pairs")
    data.add_argument("--source-lang", default="English")
    data.add_argument("--target-lang", default="German")
    data.add_argument("--system-prompt", help="system prompt (kept in exposst.json)")

    method = p.add_argument_group("layout and policy")
    method.add_argument("--layout", choices=TRAIN_MODES, default="exposst")
    method.add_argument(
        "--policy",
        default="wait-k:1-9",
        help="policy or mix: wait-3, read-2/write-1, wait-k:1-9 (k drawn per example), "
        "or a comma list (default: %(default)s)",
    )
    method.add_argument(
        "--inference-policy",
        help="policy recorded for sessions and used for dev BLEU "
        "(default: the single training policy, else wait-3)",
    )
    method.add_argument("--slot-len", type=int, default=DEFAULT_SLOT_LEN)
    method.add_argument(
        "--refeed",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_REFEED,
        help="the refeed rule: after a READ, predict the next target token from a copy of "
        "the last one at its own position (exposst layout; docs/design.md)",
    )
    method.add_argument(
        "--lookahead-labels",
        action="store_true",
        help="also train the prediction after a word's last token when a READ follows "
        "(the lookahead that ends the word; docs/training.md)",
    )

    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=16)
    lora.add_argument("--lora-alpha", type=int, default=32)
    lora.add_argument("--lora-dropout", type=float, default=0.05)
    lora.add_argument(
        "--lora-top-layers",
        type=int,
        help="LoRA only on the upper N decoder layers (the backward stops there; default: all)",
    )
    lora.add_argument(
        "--lora-targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated module names, or all-linear (default: %(default)s)",
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    opt.add_argument("--schedule", choices=SCHEDULES, default="linear")
    opt.add_argument("--warmup", type=float, default=0.03, help="< 1: share of steps; else steps")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--epochs", type=float, default=1.0)
    opt.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides epochs)")
    opt.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    opt.add_argument("--max-batch-size", type=int, help="sentences per batch at most")
    opt.add_argument("--grad-accum", type=int, default=1)
    opt.add_argument("--max-length", type=int, default=256, help="longer examples are left out")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="float32, bfloat16 (autocast on the CPU, mixed precision on CUDA), or auto: "
        "bfloat16 on a CPU with avx512_bf16 or AMX, float32 elsewhere (default: %(default)s)",
    )
    opt.add_argument(
        "--bf16",
        action="store_const",
        const="bfloat16",
        dest="precision",
        help="--precision bfloat16",
    )
    opt.add_argument(
        "--forward",
        choices=FORWARDS,
        default="fast",
        help="fast: the shared prompt prefix once per batch and the LM head only at labels; "
        "label-head: only the second cut; plain: model(**batch) (default: %(default)s)",
    )
    opt.add_argument(
        "--plain-forward",
        action="store_const",
        const="plain",
        dest="forward",
        help="--forward plain",
    )
    opt.add_argument(
        "--attention",
        choices=ATTENTIONS,
        default="auto",
        help="attention kernel of training steps: eager, sdpa, or auto: eager on the CPU "
        "(SDPA's CPU backward is slow on short rows; docs/training.md), sdpa on CUDA and for "
        "--plain-forward (default: %(default)s)",
    )
    opt.add_argument(
        "--dropout-masks",
        choices=DROPOUT_MASKS,
        default="auto",
        help="how LoRA dropout draws its masks: torch (bernoulli_), fast (the same "
        "distribution from 64-bit random words, half the time), or auto: fast on the CPU, "
        "torch on CUDA and for --plain-forward (default: %(default)s)",
    )
    opt.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each decoder layer (measured 1-3%% faster on a 2-core CPU, after up "
        "to a minute of compilation; docs/training.md)",
    )
    opt.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this many minutes of training and save (exposst.json records it)",
    )
    opt.add_argument("--threads", type=int, help="torch CPU threads")

    run = p.add_argument_group("run")
    run.add_argument("-o", "--output", required=True, help="adapter folder")
    run.add_argument("--model", default="default", help="checkpoint folder, default, tiny-llama")
    run.add_argument("--cache-dir", help="model cache (default ~/.cache/vllm-exposst)")
    run.add_argument(
        "--resume", nargs="?", const="latest", help="resume from a checkpoint folder (or latest)"
    )
    run.add_argument(
        "--init-adapter", help="continue training this PEFT adapter (e.g. an offline SFT one)"
    )
    run.add_argument(
        "--full",
        action="store_true",
        help="train every weight instead of LoRA; OUTPUT becomes a checkpoint folder that "
        "vllm serve and exposst-eval --model take (with its exposst.json)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an adapter in --output")
    run.add_argument("--eval-every", type=int, default=500, help="steps between dev evaluations")
    run.add_argument("--eval-sentences", type=int, default=100, help="dev pairs to use")
    run.add_argument(
        "--eval-decode",
        type=int,
        help="of those, how many to decode for dev BLEU (default: all; 0: dev loss only, "
        "as the reference decoder is slow on a CPU)",
    )
    run.add_argument("--save-every", type=int, default=500, help="checkpoint interval; 0: none")
    run.add_argument(
        "--keep-checkpoints",
        type=int,
        default=2,
        help="newest checkpoints kept; 0: all of them (to draw a learning curve afterwards)",
    )
    run.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="adapter weights as stored (bfloat16 halves the file)",
    )
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _files(args: argparse.Namespace, prefix: str, required: bool) -> list[str] | None:
    """``[source, target]`` or ``[pairs]`` from the flag family ``prefix``."""
    source, target, pairs = (getattr(args, f"{prefix}{k}") for k in ("source", "target", "pairs"))
    flag = f"--{prefix.replace('_', '-')}"
    if pairs and (source or target):
        raise TrainingInputError(f"give {flag}pairs or {flag}source/{flag}target, not both")
    if pairs:
        return [pairs]
    if source and target:
        return [source, target]
    if source or target:
        raise TrainingInputError(f"{flag}source and {flag}target go together")
    if required:
        raise TrainingInputError("no training data: give --source and --target, or --pairs")
    return None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train=_files(args, "", required=True) or [],
        dev=_files(args, "dev_", required=False),
        output_dir=args.output,
        model=args.model,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        system_prompt=args.system_prompt,
        layout=args.layout,
        policy=args.policy,
        inference_policy=args.inference_policy,
        slot_len=args.slot_len,
        lookahead_labels=args.lookahead_labels,
        refeed=args.refeed,
        init_adapter=args.init_adapter,
        full=args.full,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
        learning_rate=args.lr,
        schedule=args.schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        max_pairs=args.max_pairs,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        eval_every=args.eval_every,
        eval_sentences=args.eval_sentences,
        eval_decode=args.eval_decode,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        precision=args.precision,
        forward=args.forward,
        attention=args.attention,
        dropout_masks=args.dropout_masks,
        lora_top_layers=args.lora_top_layers,
        compile=args.compile,
        max_minutes=args.max_minutes,
        save_dtype=args.save_dtype,
        threads=args.threads,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .trainer import train

    try:
        result = train(config_from_args(args))
    except (TrainingInputError, FileNotFoundError, models.ModelDownloadError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    training = result.meta["training"]
    print(
        f"adapter: {result.output_dir}  steps: {result.steps}  "
        f"loss: {training['first_loss']} -> {training['last_loss']}  "
        f"pairs/s: {training['pairs_per_second']:.2f}  "
        f"target tokens/s: {training['target_tokens_per_second']:.0f}  "
        f"({training['forward']}, {training['precision']})",
        file=sys.stderr,
    )
    if result.meta.get("dev"):
        dev = result.meta["dev"]
        print(f"dev: BLEU {dev.get('bleu')}  loss {dev.get('loss')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
