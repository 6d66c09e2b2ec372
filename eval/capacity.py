"""Live capacity: the most speakers one server sustains, beside its arithmetic bound.

Starts ``vllm serve`` once (LoRA served as the README does, or a plain model; eager
for a fast start, or ``--compiled`` with torch.compile as the README's command runs),
warms it with one sentence, then:

1. **Levels.** ``N`` WebSocket speakers at ``--rate`` words/s each (``eval/load_ws.py``'s
   clients), for ``N`` in ``--levels``, stopping after the first level whose
   READ-to-WRITE p90 is over ``--p90-ms``. Capacity: the largest level within it.
2. **Saturation.** ``--saturate`` speakers sending every word at once: the engine's
   sustained rate in tokens computed per second (every token it fed, prompt and
   refeed copies included, as the ``done`` events count them), and in GFLOP/s
   (2 x parameters per token).
3. **Bound.** A speaker's demand is its tokens computed per second of speech at the
   lowest level; the bound is the saturated rate over that demand: how many speakers
   the arithmetic allows if nothing waited.

Prints a table, writes a JSON record (command, machine, date, versions).

    .venv/bin/python eval/capacity.py --start-server default --adapter adapters/exposst-smollm2 \\
        --source ../shared/data/multi30k/test_2016_flickr.en --dtype float32 \\
        --out docs/bench/capacity_float32.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from load_ws import SENTENCES, client, run_level, server_fields, session_of, start_flagged_server
from serving import add_server_flags, free_port, print_table, read_sentences, stop

from vllm_exposst.evaluation.record import write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_flags(parser)
    parser.add_argument("--levels", nargs="+", type=int, default=[8, 12, 16, 20, 24, 28, 32])
    parser.add_argument("--rate", type=float, default=2.5, help="source words/s per speaker")
    parser.add_argument("--p90-ms", type=float, default=1000.0, help="R2W p90 to sustain")
    parser.add_argument("--saturate", type=int, default=32, help="speakers at full speed")
    parser.add_argument("--sentences-per-client", type=int, default=2)
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--note", default="", help="kept in the record (what else ran)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/capacity.json"))
    return parser.parse_args(argv)


def model_parameters(model: str) -> int:
    """Parameters of the served checkpoint (its safetensors), tied weights counted once."""
    from math import prod

    from safetensors import safe_open

    from vllm_exposst import models

    total = 0
    for path in sorted(Path(models.resolve_model(model)).glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            total += sum(prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return total


def demand_per_speaker(level: dict) -> float:
    """Tokens a speaker makes the engine compute per second of speech."""
    speech_seconds = level["source_words"] / level["rate_words_per_s"]
    return level["tokens_computed"] / speech_seconds


def measure(args: argparse.Namespace, url: str) -> tuple[list[dict], dict]:
    sentences = read_sentences(args.source, SENTENCES)
    session = session_of(args)
    asyncio.run(client(url, {}, sentences[:1], args.rate, session, [], []))  # warm-up
    levels = []
    for n in args.levels:
        level = asyncio.run(run_level(args, url, {}, sentences, n))
        levels.append(level)
        p90 = level["read_to_write_ms"]["p90"]
        print(f"{n} speakers: R2W p90 {p90:.0f} ms", flush=True)
        if p90 > args.p90_ms:
            break
    saturated = asyncio.run(run_level(args, url, {}, sentences, args.saturate, rate=1000.0))
    print(f"saturated ({args.saturate}): {saturated['tokens_per_second']:.0f} tokens/s", flush=True)
    return levels, saturated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = f"ws://127.0.0.1:{free_port()}"
    server = start_flagged_server(args, url)
    try:
        levels, saturated = measure(args, url)
    finally:
        stop([server])
    within = [lv["clients"] for lv in levels if lv["read_to_write_ms"]["p90"] <= args.p90_ms]
    capacity = max(within, default=0)
    demand = demand_per_speaker(levels[0])
    bound = saturated["tokens_per_second"] / demand
    flops_per_token = 2 * model_parameters(args.start_server)
    gflops = saturated["tokens_per_second"] * flops_per_token / 1e9
    rows = [
        (
            str(lv["clients"]),
            f"{lv['read_to_write_ms']['p50']:.0f}",
            f"{lv['read_to_write_ms']['p90']:.0f}",
            f"{lv['first_word_per_read_ms']['p90']:.0f}",
            f"{lv['tokens_per_second']:.0f}",
            "yes" if lv["read_to_write_ms"]["p90"] <= args.p90_ms else "no",
        )
        for lv in levels
    ]
    variant = "LoRA" if args.adapter else "plain"
    title = f"capacity, {variant}, {args.dtype}, {args.rate} words/s, R2W p90 <= {args.p90_ms:.0f}"
    columns = ("speakers", "R2W p50 ms", "R2W p90 ms", "first word per READ p90 ms")
    print_table(title, (*columns, "tokens/s", "sustained"), rows)
    print(
        f"saturated: {saturated['tokens_per_second']:.0f} tokens/s ({gflops:.1f} GFLOP/s); "
        f"a speaker needs {demand:.1f} tokens/s; bound {bound:.1f} speakers; "
        f"capacity {capacity} = {capacity / bound:.2f} of the bound"
    )
    write_record(
        args.out,
        {"levels": levels, "saturated": saturated},
        **server_fields(args),
        capacity_speakers=capacity,
        demand_tokens_per_second=demand,
        saturated_tokens_per_second=saturated["tokens_per_second"],
        flops_per_token=flops_per_token,
        saturated_gflops=gflops,
        bound_speakers=bound,
        capacity_over_bound=capacity / bound,
        p90_limit_ms=args.p90_ms,
        note=args.note,
        cpu_count=os.cpu_count(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
