"""``exposst-decode``: simultaneous translation with the transformers reference decoder.

The slow, dependable path: one sentence at a time, greedy, on the CPU.  It is the
oracle the vLLM engine is checked against and a way to try a model or policy
without a server.  On the default model it decodes with the shipped ExPosST adapter
and the settings its ``exposst.json`` records, as ``make demo`` serves it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import models
from .adapter_meta import adapter_session_settings
from .defaults import (
    DECODE_MODES,
    DEFAULT_POLICY,
    DEFAULT_REFEED,
    DEFAULT_SLOT_LEN,
    OFFLINE,
    SOURCE_LANG,
    TARGET_LANG,
)
from .layout import REFEED, PositionLimitError
from .policies import parse_policy
from .prompts import build_prompt
from .reference import ReferenceDecoder
from .shipped import add_weight_flags, chosen_adapter

MODES = (*DECODE_MODES, OFFLINE)


EXAMPLES = """examples:
  exposst-decode "A man is walking in the park."          # shipped adapter, its policy
  exposst-decode --policy wait-5 --compare recompute offline --json --input talk.en
  exposst-decode --base --model tiny-llama --mode shift "a man walks"   # no adapter
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="exposst-decode",
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sentences", nargs="*", help="source sentences (or use --input)")
    parser.add_argument("--input", type=Path, help="file with one source sentence per line")
    parser.add_argument(
        "--model",
        default="default",
        help="checkpoint folder, 'default' (SmolLM2-135M-Instruct) or tiny-llama / tiny-qwen2",
    )
    add_weight_flags(parser)
    parser.add_argument(
        "--policy",
        help=f"e.g. wait-3, read-2/write-1 (default: the adapter's, else {DEFAULT_POLICY})",
    )
    parser.add_argument("--mode", choices=MODES, help="default: the adapter's layout, else exposst")
    parser.add_argument(
        "--compare", choices=MODES, nargs="*", default=[], help="further modes to run and compare"
    )
    parser.add_argument(
        "--slot-len", type=int, help=f"default: the adapter's, else {DEFAULT_SLOT_LEN}"
    )
    parser.add_argument(
        "--refeed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the refeed rule in exposst mode (docs/design.md; default: the adapter's, else on)",
    )
    parser.add_argument("--source-lang", help=f"default: the adapter's, else {SOURCE_LANG}")
    parser.add_argument("--target-lang", help=f"default: the adapter's, else {TARGET_LANG}")
    parser.add_argument(
        "--max-target-tokens", type=int, help="cap per sentence (default: 2 x source + 16)"
    )
    parser.add_argument("--cache-dir", help="model cache (default ~/.cache/vllm-exposst)")
    parser.add_argument("--json", action="store_true", help="print one JSON record per line")
    return parser.parse_args(argv)


# what a run uses when neither a flag nor the adapter's exposst.json says
FALLBACK = {
    "policy": DEFAULT_POLICY,
    "mode": "exposst",
    "slot_len": DEFAULT_SLOT_LEN,
    "refeed": DEFAULT_REFEED,
    "source_lang": SOURCE_LANG,
    "target_lang": TARGET_LANG,
    "system_prompt": None,
}


def settle(args: argparse.Namespace) -> None:
    """Fill unset flags from the adapter's ``exposst.json``, then the defaults."""
    args.adapter = chosen_adapter(args.model, args.adapter, args.base)
    recorded = adapter_session_settings(args.adapter) if args.adapter else {}
    for key, fallback in FALLBACK.items():
        if getattr(args, key, None) is None:
            setattr(args, key, recorded.get(key, fallback))


def load_model(args: argparse.Namespace):  # -> (model, tokenizer)
    """The checkpoint, with the adapter applied (PEFT) when there is one."""
    model, tokenizer = models.load(models.resolve_model(args.model, args.cache_dir))
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
    return model, tokenizer


def read_sentences(args: argparse.Namespace) -> list[str]:
    sentences = list(args.sentences)
    if args.input:
        sentences += [line.strip() for line in args.input.read_text().splitlines() if line.strip()]
    if not sentences:
        raise ValueError("no source sentences: give them as arguments or with --input FILE")
    return sentences


def run(args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    sentences = read_sentences(args)
    settle(args)
    policy = parse_policy(args.policy)
    model, tokenizer = load_model(args)
    weights = f"{args.model} + {args.adapter}" if args.adapter else f"{args.model} (no adapter)"
    print(f"exposst-decode: {weights}, slot_len {args.slot_len}", file=sys.stderr)
    template = build_prompt(
        tokenizer, args.source_lang, args.target_lang, system_prompt=args.system_prompt
    )
    modes = [args.mode, *[m for m in args.compare if m != args.mode]]
    records = []
    for mode in modes:
        decoder = ReferenceDecoder(
            model,
            template,
            mode="recompute" if mode == "offline" else mode,
            slot_len=args.slot_len,
            max_target_tokens=args.max_target_tokens,
            refeed=args.refeed,
        )
        use = parse_policy("offline") if mode == "offline" else policy
        for source in tqdm(sentences, desc=f"{mode} {use.spec}", file=sys.stderr):
            start = time.perf_counter()
            result = decoder.translate(source, use)
            source_read = sum(n for kind, n in result.events if kind == "R")
            minimum = template.prefix_len + source_read + template.header_len
            source_tokens = sum(len(w) for w in template.words_ids(source))
            records.append(
                {
                    "mode": mode,
                    "policy": use.spec,
                    "source": source,
                    "translation": result.text,
                    "delays": result.delays,
                    "tokens_computed": result.tokens_computed,
                    # copies of the last target token fed by the refeed rule (computed, not
                    # part of the minimum)
                    "refeeds": sum(kind == REFEED for kind, _ in result.events),
                    "tokens_minimum": minimum + len(result.target_ids),
                    # cut at the target cap: the last target token was never needed
                    "truncated": len(result.target_ids) >= decoder.target_limit(source_tokens),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        show(records)
    return records


def show(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="simultaneous translation (reference decoder)", show_lines=True)
    for column in ("mode", "source", "translation", "delays", "computed / min", "s"):
        table.add_column(column)
    for r in records:
        table.add_row(
            f"{r['mode']}\n{r['policy']}",
            r["source"],
            r["translation"],
            " ".join(map(str, r["delays"])),
            f"{r['tokens_computed']} / {r['tokens_minimum']}",
            f"{r['seconds']:.1f}",
        )
    Console(width=max(Console().width, 140)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, PositionLimitError, models.ModelDownloadError) as err:
        print(f"exposst-decode: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
