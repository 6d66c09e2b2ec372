"""Load test: N live WebSocket clients speaking at a given rate to a running server.

Each client sends one word at a time to ``/v1/simul/realtime`` at ``--rate`` words
per second, commits, and waits for ``done``; it repeats over its sentences.  The
READ-to-WRITE latency of a delta is the time from sending the source word that
made it possible (the ``source_words_read``-th word) to receiving the delta; it is
also reported apart for deltas unlocked while the speaker talks and for those written
after the last word.  One sentence warms the server first (not measured).

    .venv/bin/python eval/load_ws.py --url ws://127.0.0.1:8000 --clients 8 32 \\
        --source ../shared/data/multi30k/test_2016_flickr.en --start-server default \\
        --adapter adapters/exposst-smollm2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets
from serving import (
    print_table,
    read_sentences,
    serve_command,
    speak_sentence,
    start,
    stop,
    wait_healthy,
)

from vllm_exposst.evaluation.record import write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="server base (ws://)")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--clients", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--sentences-per-client", type=int, default=2)
    parser.add_argument("--rate", type=float, default=2.5, help="source words per second")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--source", type=Path, help="one sentence per line (else built in)")
    parser.add_argument(
        "--start-server",
        metavar="MODEL",
        help="start `vllm serve MODEL` with the plugin first ('default' ok)",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        help="with --start-server: serve this LoRA adapter as 'exposst' and speak to it",
    )
    parser.add_argument("--max-num-seqs", type=int, default=64, help="with --start-server")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="with --start-server"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="with --start-server: torch.compile, as the README's command (default: eager)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench/load_ws.json"))
    return parser.parse_args(argv)


ADAPTER_NAME = "exposst"
SENTENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two young children are playing with a dog in the park.",
    "A woman is reading a book near the window.",
    "The old car is parked in front of the house.",
]


async def receive_sentence(
    ws,
    sent_at: list[float],
    latencies: list[float],
    words: list[int],
    tail: list[float],
    tokens: list[int] | None = None,
    first_words: list[float] | None = None,
) -> None:
    """Deltas until ``done``: each delta's latency from the word that unlocked it.

    Deltas written after the last source word go to ``tail`` (timed from that word,
    so they grow with the words still to write), the others to ``latencies``;
    ``tokens`` gets the sentence's ``tokens_computed`` (the engine's work for it);
    ``first_words`` the latency of each READ's first delta only (a READ answered: the
    words after it in the same turn, and the tail's, wait for decoding, not for the READ;
    ``bench_engine``'s READ-to-WRITE counts the same way, to the first token)."""
    seen: list[tuple[int, float]] = []
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "response.output_text.delta":
            read = event["source_words_read"]
            seen.append((read, time.perf_counter() - sent_at[read - 1]))
        elif event["type"] == "response.output_text.done":
            words.append(len(event["text"].split()))
            if tokens is not None:
                tokens.append(event["tokens_computed"])
            for read, latency in seen:
                (tail if read == len(sent_at) else latencies).append(latency)
            if first_words is not None:
                first = {}
                for read, latency in seen:
                    first.setdefault(read, latency)
                first_words.extend(first.values())
            return
        elif event["type"] == "error":
            raise RuntimeError(event["error"])


async def client(
    url: str,
    headers: dict,
    sentences: list[str],
    rate: float,
    session: dict,
    latencies: list[float],
    words: list[int],
    tail: list[float] | None = None,
    tokens: list[int] | None = None,
    first_words: list[float] | None = None,
) -> None:
    tail = [] if tail is None else tail
    async with websockets.connect(
        f"{url}/v1/simul/realtime", additional_headers=headers, max_size=None
    ) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.recv()
        for sentence in sentences:
            sent_at: list[float] = []
            receiver = asyncio.ensure_future(
                receive_sentence(ws, sent_at, latencies, words, tail, tokens, first_words)
            )
            await speak_sentence(ws, sentence, rate, sent_at)
            await receiver
        await ws.send(json.dumps({"type": "session.close"}))


def session_of(args: argparse.Namespace) -> dict:
    """What each client asks for in ``session.update``."""
    return {"policy": args.policy, **({"model": ADAPTER_NAME} if args.adapter else {})}


async def run_level(
    args, url: str, headers: dict, sentences: list[str], n: int, rate: float | None = None
) -> dict:
    """``n`` clients speaking at ``rate`` (default ``args.rate``) words per second."""
    rate = args.rate if rate is None else rate
    latencies: list[float] = []
    words: list[int] = []
    tail: list[float] = []
    tokens: list[int] = []
    spoken: list[int] = []
    first_words: list[float] = []
    start = time.perf_counter()
    jobs = []
    session = session_of(args)
    for i in range(n):
        mine = [
            sentences[(i * args.sentences_per_client + j) % len(sentences)]
            for j in range(args.sentences_per_client)
        ]
        spoken += [len(sentence.split()) for sentence in mine]
        jobs.append(
            client(url, headers, mine, rate, session, latencies, words, tail, tokens, first_words)
        )
    await asyncio.gather(*jobs)
    wall = time.perf_counter() - start
    ordered = sorted(latencies + tail)
    during, tail, firsts = sorted(latencies), sorted(tail), sorted(first_words)

    def pct(q: float, values: list[float] = ordered) -> float:
        return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else 0.0

    return {
        "clients": n,
        "rate_words_per_s": rate,
        "policy": args.policy,
        "sentences": len(words),
        "target_words": sum(words),
        "wall_seconds": wall,
        "words_written_per_second": sum(words) / wall,
        "source_words": sum(spoken),
        "tokens_computed": sum(tokens),
        "tokens_per_second": sum(tokens) / wall,
        "read_to_write_ms": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "mean": 1000 * statistics.mean(ordered),
        },
        "while_speaking_ms": {"p50": pct(0.5, during), "p90": pct(0.9, during)},
        "after_last_word_ms": {"p50": pct(0.5, tail), "p90": pct(0.9, tail)},
        "first_word_per_read_ms": {f"p{round(100 * q)}": pct(q, firsts) for q in (0.5, 0.9, 0.99)},
    }


def start_flagged_server(args, url: str, options: dict | None = None) -> subprocess.Popen:
    """:func:`start_server` from the flags of ``serving.add_server_flags``."""
    return start_server(
        args.start_server,
        url,
        args.adapter,
        args.max_num_seqs,
        args.dtype,
        args.compiled,
        options=options,
    )


def server_fields(args) -> dict:
    """The record fields that say which server a benchmark ran (its flags)."""
    return {
        "server_model": args.start_server,
        "adapter": str(args.adapter) if args.adapter else None,
        "dtype": args.dtype,
        "compiled": args.compiled,
    }


def start_server(
    model: str,
    url: str,
    adapter: Path | None = None,
    max_num_seqs: int = 64,
    dtype: str = "float32",
    compiled: bool = False,
    options: dict | None = None,
) -> subprocess.Popen:
    from vllm_exposst import models
    from vllm_exposst.evaluation.runtime import lora_rank, lora_targets

    port = int(url.rsplit(":", 1)[-1].strip("/"))
    extra: list[str] = ["--dtype", dtype]  # after serve_command's float32: this one wins
    if adapter is not None:
        extra += ["--enable-lora", "--max-lora-rank", str(lora_rank(adapter))]
        extra += ["--lora-modules", f"{ADAPTER_NAME}={adapter}"]
        targets = lora_targets(adapter)  # as the README's command: the adapter's modules only
        extra += ["--lora-target-modules", *targets] if targets else []
    command = serve_command(
        models.resolve_model(model),
        port,
        max_num_seqs=max_num_seqs,
        extra=extra,
        eager=not compiled,
        options=options,
    )
    process = start(command)
    wait_healthy(process, url.replace("ws://", "http://"))
    return process


def main(argv: list[str] | None = None) -> int:

    args = parse_args(argv)
    sentences = read_sentences(args.source, SENTENCES)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.adapter and not args.start_server:
        raise SystemExit("load_ws: --adapter needs --start-server")
    server = None
    if args.start_server:
        server = start_server(
            args.start_server, args.url, args.adapter, args.max_num_seqs, args.dtype, args.compiled
        )
    try:
        # one sentence first, not measured: the first use of an adapter loads it, and
        # the first steps of a fresh engine are slow
        asyncio.run(client(args.url, headers, sentences[:1], args.rate, session_of(args), [], []))
        results = [
            asyncio.run(run_level(args, args.url, headers, sentences, n)) for n in args.clients
        ]
    finally:
        if server is not None:
            stop([server])
    rows = [
        (
            str(r["clients"]),
            str(r["sentences"]),
            f"{r['words_written_per_second']:.1f}",
            *(f"{r['read_to_write_ms'][q]:.0f}" for q in ("p50", "p90", "p99")),
            f"{r['while_speaking_ms']['p90']:.0f}",
            f"{r['after_last_word_ms']['p90']:.0f}",
            f"{r['first_word_per_read_ms']['p90']:.0f}",
        )
        for r in results
    ]
    columns = ("clients", "sentences", "words/s", "R2W p50 ms", "R2W p90 ms", "R2W p99 ms")
    columns += ("speaking p90 ms", "after last word p90 ms", "first word per READ p90 ms")
    title = f"live WebSocket load ({args.policy}, {args.rate} words/s per client)"
    print_table(title, columns, rows)
    write_record(
        args.out,
        results,
        url=args.url,
        server_model=args.start_server,
        adapter=str(args.adapter) if args.adapter else None,
        dtype=args.dtype if args.start_server else None,
        compiled=args.compiled if args.start_server else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
