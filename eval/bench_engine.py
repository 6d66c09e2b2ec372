"""Engine benchmark: ExPosST sessions against the shift, recompute and offline modes.

The same sentences go through each mode at several concurrency levels on one
engine (SmolLM2-135M-Instruct by default, wait-3).  Reported per mode and level:
tokens the engine computed per session over the minimum (prefix + header + source
+ target), wall-clock per sentence, throughput, and READ-to-WRITE latency (a chunk
with new source to its first sampled token) against a plain decode step measured
in the same run.  Writes a JSON record and prints a table.

    .venv/bin/python eval/bench_engine.py --source ../shared/data/multi30k/test_2016_flickr.en
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from vllm_exposst import models
from vllm_exposst.defaults import CACHE_KEEPING_MODES, DEFAULT_SLOT_LEN
from vllm_exposst.engine import SimulEngine
from vllm_exposst.evaluation.plots import pyplot
from vllm_exposst.evaluation.record import write_record
from vllm_exposst.models import ENGLISH_WORDS

MODES = ("exposst", "shift", "recompute", "offline")
QUEUEING = CACHE_KEEPING_MODES  # the modes that queue READs (vllm_exposst/queued_read.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="one English sentence per line")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--model", default="default")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--slot-len", type=int, default=DEFAULT_SLOT_LEN)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument(
        "--queue-reads",
        nargs="+",
        choices=["on", "off"],
        default=["on"],
        help="queued READs (exposst and shift; 'on off' measures both in one run)",
    )
    parser.add_argument("--max-target-tokens", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/engine.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of throughput per mode")
    return parser.parse_args(argv)


def load_sentences(args: argparse.Namespace) -> list[str]:
    if args.source:
        lines = [line.strip() for line in args.source.read_text().splitlines() if line.strip()]
        return lines[: args.sentences]
    rng = random.Random(0)
    return [
        " ".join(rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        for _ in range(args.sentences)
    ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_level(
    engine: SimulEngine,
    sentences: list[str],
    mode: str,
    level: int,
    args: argparse.Namespace,
    queue_reads: bool = True,
) -> dict:
    gate = asyncio.Semaphore(level)

    async def one(source: str):
        async with gate:
            start = time.perf_counter()
            result = await engine.translate(
                source,
                policy=args.policy,
                mode=mode,
                slot_len=args.slot_len,
                max_target_tokens=args.max_target_tokens,
                queue_reads=queue_reads,
            )
            return result, time.perf_counter() - start

    start = time.perf_counter()
    done = await asyncio.gather(*[one(s) for s in sentences])
    wall = time.perf_counter() - start
    counts = (await engine.stats())["tokens_computed"]
    ratios, read, steps, target_tokens, queued, chunks = [], [], [], 0, 0, 0
    for result, _ in done:
        computed = sum(counts.get(r, 0) for r in result.request_ids)
        ratios.append(computed / result.tokens_minimum)
        read += result.read_latencies
        steps += result.decode_steps
        target_tokens += len(result.target_ids)
        queued += result.queued_reads
        chunks += len(result.read_latencies)
    step = statistics.median(steps) if steps else float("nan")
    return {
        "mode": mode,
        "queue_reads": queue_reads and mode in QUEUEING,
        "concurrency": level,
        "sentences": len(sentences),
        "computed_over_minimum": statistics.mean(ratios),
        "seconds_per_sentence": statistics.mean(t for _, t in done),
        "wall_seconds": wall,
        "sentences_per_second": len(sentences) / wall,
        "target_tokens_per_second": target_tokens / wall,
        "read_to_write_median_ms": 1000 * statistics.median(read) if read else float("nan"),
        "read_to_write_p90_ms": 1000 * percentile(read, 0.9),
        "decode_step_median_ms": 1000 * step,
        "read_to_write_over_step": (statistics.median(read) / step) if read and steps else None,
        "read_chunks": chunks,
        "queued_reads": queued,
    }


def table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="engine benchmark")
    columns = [
        ("mode", "mode", "{}"),
        ("queued", "queue_reads", "{}"),
        ("conc", "concurrency", "{}"),
        ("computed/min", "computed_over_minimum", "{:.2f}"),
        ("s/sentence", "seconds_per_sentence", "{:.2f}"),
        ("sent/s", "sentences_per_second", "{:.2f}"),
        ("x recompute", "vs_recompute", "{:.2f}"),
        ("x offline", "vs_offline", "{:.2f}"),
        ("R2W med ms", "read_to_write_median_ms", "{:.0f}"),
        ("R2W p90 ms", "read_to_write_p90_ms", "{:.0f}"),
        ("step ms", "decode_step_median_ms", "{:.0f}"),
        ("R2W/step", "read_to_write_over_step", "{:.2f}"),
        ("queued/READs", "queued_share", "{:.2f}"),
    ]
    for title, *_ in columns:
        out.add_column(title)
    for row in results:
        row["queued_share"] = row["queued_reads"] / row["read_chunks"] if row["read_chunks"] else 0
        out.add_row(*[fmt.format(row.get(key, float("nan"))) for _, key, fmt in columns])
    Console(width=160).print(out)


def add_ratios(results: list[dict]) -> None:
    """Throughput relative to recompute and offline at the same concurrency."""
    by = {(r["mode"], r["concurrency"]): r for r in results}
    for row in results:
        for base in ("recompute", "offline"):
            other = by.get((base, row["concurrency"]))
            if other:
                row[f"vs_{base}"] = row["sentences_per_second"] / other["sentences_per_second"]


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lines = sorted(
        {(r["mode"], r["queue_reads"]) for r in results}, key=lambda k: MODES.index(k[0])
    )
    for mode, queued in lines:
        rows = [r for r in results if (r["mode"], r["queue_reads"]) == (mode, queued)]
        label = f"{mode}, queued READs" if queued else mode
        levels = [r["concurrency"] for r in rows]
        axes[0].plot(levels, [r["sentences_per_second"] for r in rows], marker="o", label=label)
        axes[1].plot(levels, [r["computed_over_minimum"] for r in rows], marker="o", label=label)
    axes[0].set(xlabel="concurrent sessions", ylabel="sentences / s", xscale="log")
    axes[1].set(xlabel="concurrent sessions", ylabel="tokens computed / minimum", xscale="log")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


async def main_async(args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    sentences = load_sentences(args)
    path = models.resolve_model(args.model)
    engine = SimulEngine.from_engine_args(
        model=str(path),
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=max(args.concurrency),
        disable_log_stats=True,
        seed=0,
        session_max_tokens=1,
    )
    results = []
    try:
        await engine.translate(sentences[0], policy=args.policy)  # warm-up
        plan = [
            (mode, level, queue == "on")
            for level in args.concurrency
            for mode in args.modes
            for queue in (args.queue_reads if mode in QUEUEING else ["off"])
        ]
        for mode, level, queue in tqdm(plan, desc="benchmark", file=sys.stderr):
            results.append(await run_level(engine, sentences, mode, level, args, queue))
    finally:
        engine.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    add_ratios(results)
    table(results)
    write_record(
        args.out,
        results,
        model=args.model,
        policy=args.policy,
        slot_len=args.slot_len,
        source=str(args.source) if args.source else "generated",
    )
    if args.plot:
        plot(results, args.plot)
    print(f"record: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
