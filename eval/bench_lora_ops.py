"""LoRA ops on the CPU: vLLM 0.32's per-token ops, the grouped ones, the fused projection.

One engine step's LoRA work for SmolLM2-135M-Instruct's shapes (hidden 576, q 576,
k/v 192, intermediate 1536, 30 layers, rank 8, the adapter on q/k/v/o/gate/up/down),
run through vLLM's own ``PunicaWrapperCPU.add_lora_linear`` as the engine does
(V1 on the CPU always takes the sgmv path), three ways: vLLM's ops; the grouped ops
of patch/lora_cpu.py, slice by slice as vLLM's wrapper calls them; and the fused
``add_lora_linear`` of patch/lora_linear_cpu.py (a projection's slices stacked: one
shrink and one expand per adapter), which is what the engine runs.  Beside them, the
base model's dense projections for the same tokens (the arithmetic LoRA is added to),
so the table shows what LoRA adds to a step.
Prints a table (CPU milliseconds per step on one thread, median of ``--repeats``: the
work itself, however busy the machine; the wall clock is in the record), writes a
JSON record.

    .venv/bin/python eval/bench_lora_ops.py --out docs/bench/lora_ops.json

vLLM's ops give tokens without an adapter (index -1) the last slot's weights; the
mixed batches time them anyway (same work as the project's earlier -1 fix, which
did a little more).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

from vllm_exposst.evaluation.record import write_record

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS = 576, 9, 3, 1536, 30
HEAD_DIM = HIDDEN // HEADS
SLOTS = 2  # max_loras
# (name, tokens per request, LoRA id per request; 0: no adapter); decode has one token each
SCENARIOS = [
    ("decode 8, one adapter", [1] * 8, [1] * 8),
    ("decode 32, one adapter", [1] * 32, [1] * 32),
    ("decode 32, 2 adapters + base", [1] * 32, [1, 2, 0] * 10 + [1, 2]),
    ("prefill 128, one adapter", [128], [1]),
    ("prefill 4x40, 2 adapters + base", [40] * 4, [1, 2, 0, 1]),
]


# (label, grouped ops active, slices fused): vLLM's ops, the grouped ops slice by slice,
# the fused add_lora_linear (patch/lora_linear_cpu.py, what the engine runs)
VARIANTS = [("per_token", False, False), ("grouped", True, False), ("fused", True, True)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per cell")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the table's CPU ms: use 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench/lora_ops.json"))
    parser.add_argument("--note", default="", help="what else ran on the machine, etc.")
    return parser.parse_args(argv)


# each projection: (input size, output slices), as vLLM's fused LoRA layers see them
PROJECTIONS = [
    (HIDDEN, (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM)),  # qkv
    (HIDDEN, (HIDDEN,)),  # o
    (HIDDEN, (INTERMEDIATE, INTERMEDIATE)),  # gate_up
    (INTERMEDIATE, (HIDDEN,)),  # down
]


def make_layers(layers: int, rank: int, dtype: torch.dtype) -> list[list[dict]]:
    """Random LoRA stacks (slots, 1, r, in) / (slots, 1, out, r) and dense weights."""
    out = []
    for _ in range(layers):
        layer = []
        for inputs, slices in PROJECTIONS:
            layer.append(
                {
                    "a": tuple(torch.randn(SLOTS, 1, rank, inputs, dtype=dtype) for _ in slices),
                    "b": tuple(torch.randn(SLOTS, 1, s, rank, dtype=dtype) / 10 for s in slices),
                    "dense": torch.randn(sum(slices), inputs, dtype=dtype) / 30,
                    "slices": slices,
                }
            )
        out.append(layer)
    return out


def make_wrapper(lengths: list[int], lora_ids: list[int]):
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    tokens = [lora for length, lora in zip(lengths, lora_ids) for _ in range(length)]
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=4096, max_batches=256, device="cpu")
    mapping = LoRAMapping(tuple(tokens), tuple(lora_ids), is_prefill=True)  # as V1 on CPU
    wrapper.update_metadata(mapping, [1, 2], SLOTS, vocab_size=49152)
    return wrapper, len(tokens)


def lora_step(wrapper, layers, inputs: dict[int, torch.Tensor], outputs: dict) -> None:
    for layer in layers:
        for (size, slices), projection in zip(PROJECTIONS, layer):
            wrapper.add_lora_linear(
                outputs[sum(slices)], inputs[size], projection["a"], projection["b"], 2.0, slices
            )


def dense_step(layers, inputs: dict[int, torch.Tensor]) -> None:
    for layer in layers:
        for (size, _), projection in zip(PROJECTIONS, layer):
            torch.mm(inputs[size], projection["dense"].t())


def timed(step, repeats: int) -> tuple[float, float]:
    """Median milliseconds per call: (CPU time of this process, wall clock).

    With one thread the CPU time is the work itself, unaffected by other jobs taking
    the core away (the wall clock is not)."""
    step()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def main(argv: list[str] | None = None) -> None:
    from vllm_exposst import plugin
    from vllm_exposst.patch import lora_cpu, lora_linear_cpu

    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    plugin.register()  # installs the switched ops; lora_cpu._active picks which run
    torch.manual_seed(0)
    layers = make_layers(args.layers, args.rank, dtype)
    rows = []
    for name, lengths, lora_ids in SCENARIOS:
        wrapper, tokens = make_wrapper(lengths, lora_ids)
        inputs = {size: torch.randn(tokens, size, dtype=dtype) for size in (HIDDEN, INTERMEDIATE)}
        widths = {sum(slices) for _, slices in PROJECTIONS}
        outputs = {width: torch.zeros(tokens, width, dtype=dtype) for width in widths}
        cell = {"scenario": name, "tokens": tokens}
        step = functools.partial(lora_step, wrapper, layers, inputs, outputs)
        for label, active, fused in VARIANTS:
            lora_cpu._active, lora_linear_cpu.fuse_slices = active, fused
            cell[f"{label}_ms"], cell[f"{label}_wall_ms"] = timed(step, args.repeats)
        lora_cpu._active, lora_linear_cpu.fuse_slices = False, True
        dense = functools.partial(dense_step, layers, inputs)
        cell["dense_ms"], cell["dense_wall_ms"] = timed(dense, args.repeats)
        cell["speedup"] = cell["per_token_ms"] / cell["fused_ms"]
        cell["fused_over_grouped"] = cell["fused_ms"] / cell["grouped_ms"]
        if not rows:
            print_header()
        rows.append(cell)
        print_row(cell)
    write_record(
        args.out,
        rows,
        dtype=args.dtype,
        rank=args.rank,
        layers=args.layers,
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        note=args.note,
    )
    print(f"record: {args.out}")


def print_header() -> None:
    print(
        f"{'scenario':34} {'tokens':>6} {'per-token ms':>13} {'grouped ms':>11} "
        f"{'fused ms':>9} {'speedup':>8} {'dense ms':>9} {'fused/dense':>11}"
    )


def print_row(cell: dict) -> None:
    print(
        f"{cell['scenario']:34} {cell['tokens']:6d} {cell['per_token_ms']:13.2f} "
        f"{cell['grouped_ms']:11.2f} {cell['fused_ms']:9.2f} {cell['speedup']:7.1f}x "
        f"{cell['dense_ms']:9.2f} {cell['fused_ms'] / cell['dense_ms']:11.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
