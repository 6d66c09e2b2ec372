"""``exposst-eval``: a test set through one in-process engine, every mode and policy.

Writes, under ``--output``: ``<mode>/<policy>/instances.log`` (SimulEval's format, which
OmniSTEval reads with ``references.txt``), ``simulstream.jsonl`` with ``simulstream.yaml``
(simulstream's metrics log) and ``scores.tsv`` per run; ``record.json`` (scores of
every run with command, machine, date and versions), ``quality_latency.png`` and
``cost.png``; prints a table.  ``--talks FILE`` (a talk id per line) also streams
each talk as one text through the server's segmenter and scores it as a whole
(``<mode>/<policy>/talks/``, :mod:`.talks`): OmniSTEval's long-form BLEU, chrF and
LongYAAL, simulstream's StreamLAAL, beside the sentence-level scores of the same lines.

    exposst-eval --source test.en --target test.de --limit 100 \\
        --modes exposst,shift,recompute,offline --policies wait-1,3,5,7,9
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_SLOT_LEN, MAX_SENTENCE_WORDS, MODES, SOURCE_LANG, TARGET_LANG
from ..shipped import add_weight_flags, chosen_adapter
from .data import Pair, load_pairs
from .logs import (
    write_config,
    write_instances,
    write_references,
    write_scores,
    write_simulstream,
)
from .metrics import DEFAULT_SPEAKING_RATE, score_run
from .record import write_record
from .runner import RunSettings, RunSpec, parse_policies, plan_runs, run_spec
from .runtime import (
    ADAPTER_NAME,
    engine_options,
    quiet_optional_imports,
    start_engine,
)
from .talks import Talk, load_talks, run_talks, score_talks, talk_sentences

EXAMPLES = """examples:
  exposst-eval --source test.en --target test.de --limit 100            # shipped adapter
  exposst-eval --source test.en --target test.de --modes exposst,recompute --policies wait-3,5
  exposst-eval --adapter my-adapter --source dev.en --target dev.de --output out/mine
  exposst-eval --source tst2016.en --target tst2016.de --talks tst2016.talks --modes exposst
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="exposst-eval",
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--target", type=Path, required=True, help="references, line by line")
    parser.add_argument("--start", type=int, default=0, help="first line (0-based)")
    parser.add_argument("--limit", type=int, default=None, help="number of lines")
    parser.add_argument(
        "--model", default="default", help="checkpoint folder, 'default' or tiny-llama/tiny-qwen2"
    )
    add_weight_flags(parser)
    parser.add_argument(
        "--modes", "--methods", dest="modes", default=",".join(MODES), help="comma-separated"
    )
    parser.add_argument("--policies", default="wait-1,3,5,7,9", help="e.g. wait-1,3,5 or wait-3")
    parser.add_argument(
        "--slot-len",
        type=int,
        default=None,
        help=f"default: the adapter's, else {DEFAULT_SLOT_LEN}",
    )
    parser.add_argument("--max-target-tokens", type=int, default=None)
    parser.add_argument(
        "--source-lang", default=None, help=f"default: the adapter's, else {SOURCE_LANG}"
    )
    parser.add_argument(
        "--target-lang", default=None, help=f"default: the adapter's, else {TARGET_LANG}"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="sessions open at once")
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_SPEAKING_RATE,
        help="speaking rate (source words/s) for computation-aware LAAL",
    )
    parser.add_argument(
        "--talks",
        type=Path,
        help="talk id per line of the test set: also score each talk as one stream",
    )
    parser.add_argument(
        "--max-sentence-words",
        type=int,
        default=MAX_SENTENCE_WORDS,
        help="--talks: the segmenter's word cap, as the server's (0: none)",
    )
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument(
        "--dtype",
        default="auto",
        help="model dtype; auto: the platform's (float32 on the CPU, docs/engine.md)",
    )
    parser.add_argument(
        "--refeed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the refeed rule in exposst mode (default: the adapter's, else on)",
    )
    parser.add_argument(
        "--prefix-caching",
        action="store_true",
        help="let sessions reuse cached prompt blocks (off: each sentence's count is its own)",
    )
    parser.add_argument("--output", type=Path, default=Path("out/eval"))
    parser.add_argument("--record", type=Path, help="JSON record (default OUTPUT/record.json)")
    parser.add_argument("--plots", type=Path, help="folder for the PNGs (default OUTPUT)")
    parser.add_argument("--title", default="", help="title of the plots")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    return args


def settings_from(args: argparse.Namespace) -> RunSettings:
    """What the flags set; the rest comes from the adapter's ``exposst.json`` or the defaults."""
    return RunSettings(
        slot_len=args.slot_len,
        refeed=args.refeed,
        lora=ADAPTER_NAME if args.adapter is not None else None,
        max_target_tokens=args.max_target_tokens,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        concurrency=args.concurrency,
    )


async def evaluate(
    engine: Any,
    pairs: list[Pair],
    runs: list[RunSpec],
    settings: RunSettings,
    output: Path,
    rate: float = DEFAULT_SPEAKING_RATE,
    talks: list[Talk] | None = None,
    max_words: int | None = None,
) -> list[dict[str, Any]]:
    """Every run on one engine; writes each run's files and returns one row per run
    (with ``talks``, each run's talk-level scores too)."""
    from tqdm import tqdm

    rows = []
    total = len(pairs) * len(runs)
    if talks:
        language = settings.session(engine, runs[0]).source_lang
        total += len(runs) * sum(len(talk_sentences(t, language, max_words)) for t in talks)
    with tqdm(total=total, desc="sentences", unit="sent", file=sys.stderr) as bar:
        for spec in runs:
            bar.set_postfix_str(spec.label)
            hyps, wall = await run_spec(engine, pairs, spec, settings, on_done=lambda: bar.update())
            scores = score_run(hyps, rate)
            folder = output / spec.folder
            write_instances(folder / "instances.log", hyps, rate)
            write_references(folder / "references.txt", hyps)
            write_simulstream(folder / "simulstream.jsonl", hyps, rate)
            write_config(folder)
            write_scores(folder / "scores.tsv", scores)
            row = {"mode": spec.mode, "policy": spec.policy, **scores}
            row.update(wall_seconds=wall, sentences_per_second=len(pairs) / wall)
            row["instances"] = str(folder / "instances.log")
            rows.append(row)
            bar.write(
                f"{spec.label}: BLEU {scores['BLEU']:.2f}  LAAL {scores['LAAL']:.2f}  "
                f"computed/min {scores['computed_over_minimum']:.2f}  {wall:.1f} s"
            )
            if talks:
                row.update(
                    await talk_row(engine, talks, spec, settings, folder, rate, max_words, bar)
                )
    return rows


async def talk_row(
    engine: Any,
    talks: list[Talk],
    spec: RunSpec,
    settings: RunSettings,
    folder: Path,
    rate: float,
    max_words: int | None,
    bar: Any,
) -> dict[str, Any]:
    """One run's talks, streamed and scored whole (:mod:`.talks`); the row's talk fields."""
    hyps, wall = await run_talks(engine, talks, spec, settings, max_words, lambda: bar.update())
    scores, per_talk = score_talks(hyps, folder / "talks", rate)
    bar.write(
        f"{spec.label} talks: BLEU {scores['BLEU']:.2f}  LongYAAL {scores['LongYAAL']:.0f} ms  "
        f"StreamLAAL {scores['StreamLAAL']:.2f} s  {scores['segmented_sentences']} sentences "
        f"cut for {scores['reference_sentences']} references"
    )
    fields = {f"talk_{k}" if k in ("BLEU", "chrF") else k: v for k, v in scores.items()}
    return {**fields, "talk_wall_seconds": wall, "per_talk": per_talk}


async def run_all(args: argparse.Namespace, pairs: list[Pair], runs: list[RunSpec]) -> list[dict]:
    options = engine_options(
        args.model,
        args.adapter,
        max_num_seqs=args.concurrency,
        max_model_len=args.max_model_len,
        prefix_caching=args.prefix_caching,
        dtype=args.dtype,
    )
    engine = await start_engine(options)
    args.engine_dtype = engine.dtype  # what the record says the engine ran in
    print(f"exposst-eval: {args.model} in {args.engine_dtype}", file=sys.stderr)
    try:
        settings = settings_from(args)
        # warm-up outside the measurements: the first request pays one-time costs
        await engine.translate(pairs[0].source, config=settings.session(engine, runs[0]))
        return await evaluate(
            engine,
            pairs,
            runs,
            settings,
            args.output,
            args.rate,
            talks=getattr(args, "talk_list", None),
            max_words=args.max_sentence_words or None,
        )
    finally:
        engine.shutdown()  # the core gets its grace (patch/teardown.py)


def publish(args: argparse.Namespace, rows: list[dict[str, Any]], pairs: list[Pair]) -> Path:
    """Print the table, draw the plots and write the record; returns the record's path."""
    from rich.console import Console

    from .plots import plot_cost, plot_quality_latency
    from .report import TALK_COLUMNS, summary_table

    console = Console(width=180)
    console.print(summary_table(rows, title=f"{args.model} on {args.source.name}"))
    if getattr(args, "talk_list", None):
        title = f"{len(args.talk_list)} talks of {args.source.name}, each one stream"
        console.print(summary_table(rows, title=title, columns=TALK_COLUMNS))
    console.print(f"BLEU: {rows[0]['bleu_signature']}\nchrF: {rows[0]['chrf_signature']}")
    record = args.record or args.output / "record.json"
    plots = args.plots or args.output
    title = args.title or f"{args.model}{' + adapter' if args.adapter else ''}, {len(pairs)} sent."
    images = [
        plot_quality_latency(rows, plots / "quality_latency.png", title),
        plot_cost(rows, plots / "cost.png", title),
    ]
    write_record(
        record,
        rows,
        model=args.model,
        adapter=str(args.adapter) if args.adapter else None,
        source=str(args.source),
        target=str(args.target),
        start=args.start,
        sentences=len(pairs),
        slot_len=settings_from(args).slot_len,
        refeed=args.refeed,
        concurrency=args.concurrency,
        prefix_caching=args.prefix_caching,
        dtype=getattr(args, "engine_dtype", args.dtype),
        speaking_rate=args.rate,
        talks=str(args.talks) if args.talks else None,
        max_sentence_words=args.max_sentence_words if args.talks else None,
        plots=[str(p) for p in images],
    )
    print(f"record: {record}\nplots: {', '.join(str(p) for p in images)}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    quiet_optional_imports()
    args = parse_args(argv)
    try:
        pairs = load_pairs(args.source, args.target, args.start, args.limit)
        runs = plan_runs(
            [m.strip() for m in args.modes.split(",") if m.strip()],
            parse_policies(args.policies),
        )
        if not pairs:
            raise ValueError("the slice of the test set is empty")
        args.talk_list = load_talks(args.talks, pairs) if args.talks else None
        if args.max_sentence_words < 0:
            raise ValueError("--max-sentence-words must be >= 0")
        args.adapter = chosen_adapter(args.model, args.adapter, args.base)
    except (OSError, ValueError) as err:
        print(f"exposst-eval: {err}", file=sys.stderr)
        return 2
    rows = asyncio.run(run_all(args, pairs, runs))
    gc.collect()  # free the engine's client now, not during interpreter shutdown
    publish(args, rows, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
