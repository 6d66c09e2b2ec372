"""Live-path profile: base vs adapter vs merged, float32 vs bfloat16, in one run.

Each configuration gets its own engine (SmolLM2-135M-Instruct, eager, wait-3 or the
adapter's policy).  ``--speakers`` sessions speak sentences word by word at
``--rate`` words/s, staggered, as ``make demo`` does.  Reported per configuration:
READ-to-WRITE (a chunk with new source to its first sampled token) p50/p90, the
decode step (median seconds per generated token after a turn's first) and their ratio,
how long after its speaker each sentence is done (p50/max), and agreement with the
transformers reference decoder in float32 (sentences with identical tokens, largest
|log-prob difference| over the tokens both chose) plus whether each sentence gives
the same tokens alone as beside the others, engine round trips per target word, and
how many continuation chunks the scheduler ran later than the step after arrival.
Prints a table, writes a JSON record.

    .venv/bin/python eval/profile_live.py --out docs/bench/profile_live.json

Numbers are ratios within one run: the machine may be busy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from pathlib import Path
from typing import Any

from vllm_exposst import models
from vllm_exposst.evaluation.record import write_record
from vllm_exposst.evaluation.runtime import (
    ADAPTER_NAME,
    engine_options,
    start_engine,
)

ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "exposst-smollm2"
SOURCE = Path(__file__).resolve().parent.parent / "examples" / "sentences.en"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="one sentence per line")
    parser.add_argument("--speakers", type=int, default=8, help="live sessions at once")
    parser.add_argument("--rate", type=float, default=2.5, help="words per second")
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between speakers")
    parser.add_argument("--reference", type=int, default=4, help="sentences checked alone")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["base", "adapter", "merged"],
        choices=["base", "adapter", "merged", "adapter-all-modules"],
        help="adapter-all-modules: LoRA wrappers on every module vLLM can (its default)",
    )
    parser.add_argument("--adapter", type=Path, default=ADAPTER)
    parser.add_argument(
        "--merged",
        type=Path,
        default=None,
        help="default: merged into the cache (again whenever the adapter's weights change)",
    )
    parser.add_argument(
        "--first",
        nargs="*",
        default=[("float32", "adapter"), ("float32", "merged"), ("bfloat16", "adapter")],
        type=lambda text: tuple(text.split(":")),
        help="dtype:variant pairs to run first (the comparisons that matter most)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench/profile_live.json"))
    parser.add_argument("--note", default="", help="what else ran on the machine, etc.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every engine this many times, alternating (ABAB...); the summary is "
        "each variant's step over the merged (or base) step of the same round, median "
        "over rounds: on a shared machine one pair of runs can differ by 20%%",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["eager"],
        choices=["eager", "compiled"],
        help="compiled: torch.compile (vLLM's default outside --enforce-eager)",
    )
    parser.add_argument(
        "--block-sizes",
        nargs="+",
        type=int,
        default=[None],
        help="KV block sizes to compare (default: the engine's own, 32 on the CPU)",
    )
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def speak(engine: Any, config: Any, sentence: str, rate: float, delay: float) -> dict:
    """One live speaker; returns its result and how long after the last word it was done."""
    await asyncio.sleep(delay)
    session = await engine.open(config)
    try:
        for i, word in enumerate(sentence.split()):
            await session.push(word + " ")
            if i + 1 < len(sentence.split()):
                await asyncio.sleep(1 / rate)
        await session.finish()
        spoken = time.monotonic()
        result = await session.result()
        return {"result": result, "after_speaker": time.monotonic() - spoken}
    finally:
        await session.close()


async def profile(
    model: str,
    adapter: Path | None,
    dtype: str,
    args,
    sentences,
    compiled: bool = False,
    **extra: Any,
) -> dict:
    """One engine: live speakers, then each sentence alone (for batch invariance).
    ``extra``: engine options over :func:`engine_options`' own."""
    options = engine_options(
        model,
        adapter,
        max_num_seqs=max(8, args.speakers),
        dtype=dtype,
        enforce_eager=not compiled,
        **extra,
    )
    started = time.perf_counter()
    engine = await start_engine(options)
    start_seconds = time.perf_counter() - started
    try:
        config = engine.session_config(lora=ADAPTER_NAME if adapter else None)
        await engine.translate(sentences[0], config=config)  # warm-up, not measured
        before = await engine.stats()
        live = await asyncio.gather(
            *[
                speak(engine, config, sentences[i % len(sentences)], args.rate, i * args.stagger)
                for i in range(args.speakers)
            ]
        )
        after_live = await engine.stats()
        alone = [await engine.translate(s, config=config) for s in sentences[: args.reference]]
    finally:
        engine.shutdown()  # the core gets its grace (patch/teardown.py)
    read = [x for o in live for x in o["result"].read_latencies]
    steps = [x for o in live for x in o["result"].decode_steps]
    after = [o["after_speaker"] for o in live]
    step = statistics.median(steps)
    chunks = {  # READ priority: continuation chunks not run by the step after arrival
        key: after_live.get(key, 0) - before.get(key, 0)
        for key in ("chunks_scheduled", "chunks_delayed")
    }
    words = sum(len(o["result"].delays) for o in live)
    # engine round trips per target word; None for versions that did not count turns
    turns = [getattr(o["result"], "turns", None) for o in live]
    invariant = sum(
        live[i]["result"].target_ids == alone[i].target_ids
        for i in range(min(len(alone), len(live)))
    )
    return {
        "dtype": engine.dtype,
        "block_size": engine.block_size,
        "engine_start_seconds": start_seconds,
        "config": {"policy": config.policy, "slot_len": config.slot_len, "mode": config.mode},
        "read_to_write_p50_ms": 1000 * statistics.median(read),
        "read_to_write_p90_ms": 1000 * percentile(read, 0.9),
        "decode_step_median_ms": 1000 * step,
        "read_to_write_over_step": statistics.median(read) / step,
        "done_after_speaker_p50_s": statistics.median(after),
        "done_after_speaker_max_s": max(after),
        "turns_per_word": None if None in turns else sum(turns) / words,
        "chunks_delayed": f"{chunks['chunks_delayed']}/{chunks['chunks_scheduled']}",
        "same_alone_as_in_batch": f"{invariant}/{min(len(alone), len(live))}",
        "_alone": alone,
        "_config": config,
    }


def reference_agreement(row: dict, model_path: Path, adapter: Path | None, sentences) -> None:
    """Tokens and log-probs of the engine's lone runs against transformers in float32."""
    from vllm_exposst.prompts import build_prompt
    from vllm_exposst.reference import ReferenceDecoder

    model, tokenizer = models.load(model_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    config, alone = row.pop("_config"), row.pop("_alone")
    template = build_prompt(
        tokenizer, config.source_lang, config.target_lang, system_prompt=config.system_prompt
    )
    decoder = ReferenceDecoder(
        model, template, mode=config.mode, slot_len=config.slot_len, refeed=config.refeed
    )
    same, worst = 0, 0.0
    for sentence, result in zip(sentences, alone):
        want = decoder.translate(sentence, config.policy)
        same += want.target_ids == result.target_ids
        agree = 0
        while (
            agree < min(len(want.target_ids), len(result.target_ids))
            and want.target_ids[agree] == result.target_ids[agree]
        ):
            agree += 1
        for a, b in zip(want.logprobs[: agree + 1], result.logprobs[: agree + 1]):
            worst = max(worst, abs(a - b))
    row["reference_same_tokens"] = f"{same}/{len(alone)}"
    row["reference_max_logprob_diff"] = worst


COLUMNS = (
    ("variant", "variant", "{}"),
    ("round", "round", "{}"),
    ("mode", "mode", "{}"),
    ("block", "block_size", "{}"),
    ("start s", "engine_start_seconds", "{:.0f}"),
    ("dtype", "dtype", "{}"),
    ("R2W p50 ms", "read_to_write_p50_ms", "{:.0f}"),
    ("R2W p90 ms", "read_to_write_p90_ms", "{:.0f}"),
    ("step ms", "decode_step_median_ms", "{:.1f}"),
    ("R2W/step", "read_to_write_over_step", "{:.2f}"),
    ("done p50 s", "done_after_speaker_p50_s", "{:.2f}"),
    ("done max s", "done_after_speaker_max_s", "{:.2f}"),
    ("turns/word", "turns_per_word", "{:.2f}"),
    ("chunks late", "chunks_delayed", "{}"),
    ("alone=batch", "same_alone_as_in_batch", "{}"),
    ("ref tokens", "reference_same_tokens", "{}"),
    ("max dlogp", "reference_max_logprob_diff", "{:.2g}"),
)


def step_ratios(rows: list[dict]) -> list[dict]:
    """Each engine's decode step over the merged (else base) engine's of the same dtype,
    mode, block size and round; with the median over the rounds that have both."""

    def key(row: dict) -> tuple:
        return row["dtype"], row["mode"], row.get("block_size"), row.get("round", 0)

    baseline = {}
    for name in ("base", "merged"):  # merged wins where both ran
        baseline |= {key(r): r for r in rows if r["variant"] == name}
    ratios: dict[tuple, list[float]] = {}
    for row in rows:
        against = baseline.get(key(row))
        if against is None or against is row:
            continue
        group = (row["variant"], against["variant"], *key(row)[:3])
        step = row["decode_step_median_ms"] / against["decode_step_median_ms"]
        ratios.setdefault(group, []).append(step)
    return [
        {
            "variant": variant,
            "against": against,
            "dtype": dtype,
            "mode": mode,
            "block_size": block,
            "per_round": values,
            "median": statistics.median(values),
        }
        for (variant, against, dtype, mode, block), values in ratios.items()
    ]


def ratio_lines(summary: list[dict]) -> list[str]:
    return [
        f"{s['variant']} / {s['against']} step ({s['dtype']}, {s['mode']}): "
        f"median {s['median']:.3f} over {len(s['per_round'])} rounds "
        f"({', '.join(f'{v:.3f}' for v in s['per_round'])})"
        for s in summary
    ]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = [
        "| " + " | ".join("-" if r[k] is None else f.format(r[k]) for _, k, f in COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body])


def main(argv: list[str] | None = None) -> int:
    from vllm_exposst.evaluation.runtime import quiet_optional_imports
    from vllm_exposst.merge import cached_merge

    quiet_optional_imports()
    args = parse_args(argv)
    lines = [s.strip() for s in args.source.read_text().splitlines() if s.strip()]
    base = models.default_model()
    merged = args.merged
    if merged is None and "merged" in args.variants:  # merged again if the adapter changed
        merged = cached_merge(args.adapter, str(base))
    plan = {"base": (base, None), "adapter": (base, args.adapter), "merged": (merged, None)}
    plan["adapter-all-modules"] = plan["adapter"]  # LoRA wrappers on every module vLLM can
    runs = [(d, v) for d in args.dtypes for v in args.variants]
    runs = [r for r in runs if r in args.first] + [r for r in runs if r not in args.first]
    runs = [(d, v, m, b) for d, v in runs for m in args.modes for b in args.block_sizes]
    rows = []
    rounds = [(r, *run) for r in range(args.rounds) for run in runs]
    for turn, dtype, variant, mode, block in rounds:  # the record is rewritten after each
        model, adapter = plan[variant]
        compiled = mode == "compiled"
        every = {"lora_target_modules": None} if variant == "adapter-all-modules" else {}
        every |= {"block_size": block} if block else {}
        row = asyncio.run(profile(str(model), adapter, dtype, args, lines, compiled, **every))
        gc.collect()
        reference_agreement(row, model, adapter, lines)
        rows.append({"variant": variant, "mode": mode, "round": turn, **row})
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        summary = step_ratios(rows)
        write_record(
            args.out,
            rows,
            step_ratios=summary,
            rounds=args.rounds,
            benchmark="profile_live",
            speakers=args.speakers,
            rate=args.rate,
            stagger=args.stagger,
            model=str(base),
            adapter=str(args.adapter),
            merged=str(merged),
            note=args.note,
        )
    print(table(rows))
    for line in ratio_lines(summary):
        print(line)
    print(f"record: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
