"""Where an engine step's time goes: matrix products, attention, LoRA, sampling, our
position hook, vLLM's runner, the scheduler, other ops.

One engine (SmolLM2-135M-Instruct by default, eager, wait-3), ``--sessions`` sessions
translating Multi30K sentences at once (the whole source known, as bench_engine
does), the default adapter served as LoRA or none.  After a warm-up round, vLLM's
torch profiler records the worker over one round; its trace is split into exclusive
CPU time per category:

* ``matmul``: the base model's dense products (``_C::onednn_mm``, ``aten::mm`` ...);
* ``attention``: attention and KV-cache writes;
* ``lora``: everything inside the LoRA ops (``exposst::lora`` ranges);
* ``positions``: our position hook (``exposst::positions`` ranges);
* ``sampling``: argmax / top-k / sampler ops;
* ``runner``: Python in vLLM's model runner outside any op (``execute_context`` ranges);
* ``other ops``: everything else (norms, activations, rotary, copies, views).

The scheduler runs in the engine-core process, outside the worker's trace: its
seconds in ``schedule()`` and ``update_from_output()`` come from the scheduler's own
counters over the same round.  Beside the average over all steps, the record gives the
average decode-only step (steps with no prompt tokens): the round's first step prefills
every session at once and costs 20-40 steps' time, more in the engine that meets that
batch size first, so engines are compared on their decode steps.  Prints a table and
writes a JSON record.

    .venv/bin/python eval/profile_step.py --source ../shared/data/multi30k/test_2016_flickr.en \\
        --sessions 32 --adapter adapters/exposst-smollm2 --out docs/bench/profile_step_32.json
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

CATEGORIES = (
    "matmul",
    "attention",
    "lora",
    "positions",
    "sampling",
    "runner",
    "other ops",
    "scheduler",
)
MATMUL = ("onednn_mm", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
ATTENTION = ("attention", "attn", "kv_cache")
SAMPLING = ("argmax", "topk", "sampl", "softmax", "log_softmax")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--model", default="default")
    parser.add_argument("--adapter", type=Path, default=None, help="served as LoRA")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/profile_step.json"))
    return parser.parse_args(argv)


def category(name: str, inside: str | None) -> str:
    """The category of an op's exclusive time; ``inside`` is the exposst range around it."""
    if inside == "exposst::lora":
        return "lora"
    if inside == "exposst::positions":
        return "positions"
    lowered = name.lower()
    if name.startswith("execute_context"):
        return "runner"
    if any(key in lowered for key in MATMUL):
        return "matmul"
    if any(key in lowered for key in ATTENTION):
        return "attention"
    if any(key in lowered for key in SAMPLING):
        return "sampling"
    return "other ops"


# vLLM names each step's range execute_context_<requests>(<prompt tokens>)_generation_...
STEP_NAME = re.compile(r"execute_context_\d+\((\d+)\)")


class TraceSplit(NamedTuple):
    exclusive: Counter  # microseconds per category
    steps: int
    total: float  # microseconds in the top-level execute_context ranges
    decode_steps: int  # steps that computed no prompt tokens (only decoding)
    decode_total: float

    def decode_ms_per_step(self) -> float | None:
        """The decode step without prefill: comparable between engines, free of the
        one large first prefill (oneDNN builds its kernels for each new batch size)."""
        return self.decode_total / 1000 / self.decode_steps if self.decode_steps else None


def split_trace(path: Path) -> TraceSplit:
    """Exclusive microseconds per category, the number of steps, and the steps' total
    (sum of the top-level ``execute_context`` ranges), all steps and decode-only steps,
    from a worker's chrome trace."""
    with gzip.open(path) as trace:
        events = json.load(trace)["traceEvents"]
    spans = [
        e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")
    ]
    exclusive: Counter = Counter()
    steps, total, decode_steps, decode_total = 0, 0.0, 0, 0.0
    by_thread: dict = {}
    for event in spans:
        by_thread.setdefault(event["tid"], []).append(event)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[tuple[dict, float, str | None]] = []  # event, children's time, range
        for event in [*thread, None]:
            while stack and (
                event is None or event["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]
            ):
                done, children, inside = stack.pop()
                exclusive[category(done["name"], inside)] += done["dur"] - children
                if stack:
                    parent = stack[-1]
                    stack[-1] = (parent[0], parent[1] + done["dur"], parent[2])
            if event is None:
                break
            name = event["name"]
            if name.startswith("execute_context") and not stack:
                steps += 1
                total += event["dur"]
                prompt = STEP_NAME.match(name)
                if prompt is not None and int(prompt.group(1)) == 0:
                    decode_steps += 1
                    decode_total += event["dur"]
            inside = stack[-1][2] if stack else None
            if name.startswith("exposst::"):
                inside = inside or name
            stack.append((event, 0.0, inside))
    return TraceSplit(exclusive, steps, total, decode_steps, decode_total)


async def profile(args: argparse.Namespace, trace_dir: Path) -> dict:
    from vllm_exposst.evaluation.runtime import ADAPTER_NAME, engine_options, start_engine

    sentences = [line.strip() for line in args.source.read_text().splitlines() if line.strip()]
    sentences = sentences[: 2 * args.sessions]
    options = engine_options(
        args.model,
        args.adapter,
        max_num_seqs=args.sessions,
        dtype=args.dtype,
        session_max_tokens=1,
        profiler_config={
            "profiler": "torch",
            "torch_profiler_dir": str(trace_dir),
            "torch_profiler_with_stack": False,
        },
    )
    overrides = {"lora": ADAPTER_NAME} if args.adapter is not None else {}
    engine = await start_engine(options)
    try:
        rounds = [sentences[: args.sessions], sentences[args.sessions :]]
        await asyncio.gather(
            *[engine.translate(s, policy=args.policy, **overrides) for s in rounds[0]]
        )
        before = await engine.stats()
        await engine.llm.start_profile()
        began = time.perf_counter()
        await asyncio.gather(
            *[engine.translate(s, policy=args.policy, **overrides) for s in rounds[1]]
        )
        wall = time.perf_counter() - began
        await engine.llm.stop_profile()
        after = await engine.stats()
    finally:
        engine.shutdown()
    scheduler = {
        key: after["scheduler_seconds"][key] - before["scheduler_seconds"][key]
        for key in after["scheduler_seconds"]
    }
    return {
        "wall_seconds": wall,
        "schedule_calls": after["schedule_calls"] - before["schedule_calls"],
        "scheduler_seconds": scheduler,
    }


def main(argv: list[str] | None = None) -> int:
    from vllm_exposst.evaluation.record import write_record

    args = parse_args(argv)
    trace_dir = Path(tempfile.mkdtemp(prefix="exposst-profile-"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    measured = asyncio.run(profile(args, trace_dir))
    traces = sorted(trace_dir.glob("rank0.*.pt.trace.json.gz"))
    if not traces:
        print(f"no worker trace in {trace_dir}", file=sys.stderr)
        return 1
    split = split_trace(traces[-1])
    exclusive, steps, total = split.exclusive, split.steps, split.total
    exclusive["scheduler"] = 1e6 * sum(measured["scheduler_seconds"].values())
    whole = sum(exclusive.values())
    rows = [
        {
            "category": name,
            "ms_per_step": exclusive[name] / 1000 / max(steps, 1),
            "share": exclusive[name] / whole if whole else 0.0,
        }
        for name in CATEGORIES
    ]
    print(f"{steps} steps profiled, {total / 1000 / max(steps, 1):.1f} ms per step in the worker")
    decode = split.decode_ms_per_step()
    if decode is not None:
        print(f"{split.decode_steps} of them decode only (no prompt tokens): {decode:.1f} ms each")
    print(f"{'category':<12} {'ms/step':>8} {'share':>7}")
    for row in rows:
        print(f"{row['category']:<12} {row['ms_per_step']:>8.2f} {row['share']:>7.1%}")
    write_record(
        args.out,
        rows,
        sessions=args.sessions,
        adapter=str(args.adapter) if args.adapter else None,
        dtype=args.dtype,
        policy=args.policy,
        steps=steps,
        worker_ms_per_step=total / 1000 / max(steps, 1),
        decode_steps=split.decode_steps,
        decode_ms_per_step=decode,
        **measured,
        trace=str(traces[-1]),
    )
    print(f"record: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
