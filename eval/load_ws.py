"""Load test: N live WebSocket clients speaking at a given rate to a running server.

Each client sends one word at a time to ``/v1/simul/realtime`` at ``--rate`` words
per second, commits, and waits for ``done``; it repeats over its sentences.  The
READ-to-WRITE latency of a delta is the time from sending the source word that
made it possible (the ``source_words_read``-th word) to receiving the delta.

    .venv/bin/python eval/load_ws.py --url ws://127.0.0.1:8000 --clients 8 32 \\
        --source ../shared/data/multi30k/test_2016_flickr.en --start-server default
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

import httpx
import websockets

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
    parser.add_argument("--out", type=Path, default=Path("docs/bench/load_ws.json"))
    return parser.parse_args(argv)


SENTENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two young children are playing with a dog in the park.",
    "A woman is reading a book near the window.",
    "The old car is parked in front of the house.",
]


async def receive_sentence(
    ws, sent_at: list[float], latencies: list[float], words: list[int]
) -> None:
    """Deltas until ``done``: each delta's latency from the word that unlocked it."""
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "response.output_text.delta":
            latencies.append(time.perf_counter() - sent_at[event["source_words_read"] - 1])
        elif event["type"] == "response.output_text.done":
            words.append(len(event["text"].split()))
            return
        elif event["type"] == "error":
            raise RuntimeError(event["error"])


async def client(
    url: str,
    headers: dict,
    sentences: list[str],
    rate: float,
    policy: str,
    latencies: list[float],
    words: list[int],
) -> None:
    async with websockets.connect(
        f"{url}/v1/simul/realtime", additional_headers=headers, max_size=None
    ) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "session.update", "session": {"policy": policy}}))
        await ws.recv()
        for sentence in sentences:
            sent_at: list[float] = []
            receiver = asyncio.ensure_future(receive_sentence(ws, sent_at, latencies, words))
            for word in sentence.split():
                sent_at.append(time.perf_counter())
                await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
                await asyncio.sleep(1.0 / rate)
            await ws.send(json.dumps({"type": "input_text.commit"}))
            await receiver
        await ws.send(json.dumps({"type": "session.close"}))


async def run_level(args, url: str, headers: dict, sentences: list[str], n: int) -> dict:
    latencies: list[float] = []
    words: list[int] = []
    start = time.perf_counter()
    jobs = []
    for i in range(n):
        mine = [
            sentences[(i * args.sentences_per_client + j) % len(sentences)]
            for j in range(args.sentences_per_client)
        ]
        jobs.append(client(url, headers, mine, args.rate, args.policy, latencies, words))
    await asyncio.gather(*jobs)
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "clients": n,
        "rate_words_per_s": args.rate,
        "policy": args.policy,
        "sentences": len(words),
        "target_words": sum(words),
        "wall_seconds": wall,
        "words_written_per_second": sum(words) / wall,
        "read_to_write_ms": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "mean": 1000 * statistics.mean(ordered),
        },
    }


def start_server(model: str, url: str) -> subprocess.Popen:
    from vllm_exposst import models

    path = models.resolve_model(model)
    port = url.rsplit(":", 1)[-1].strip("/")
    command = [
        str(Path(sys.executable).parent / "vllm"),
        "serve",
        str(path),
        "--scheduler-cls",
        "vllm_exposst.scheduler.ExposstScheduler",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        "64",
        "--port",
        port,
        "--additional-config",
        json.dumps({"exposst": {"max_sessions": 64}}),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    health = url.replace("ws://", "http://") + "/health"
    for _ in range(300):
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(1)
    process.terminate()
    raise SystemExit("load_ws: the server did not start")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    sentences = SENTENCES
    if args.source:
        sentences = [s.strip() for s in args.source.read_text().splitlines() if s.strip()]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    server = start_server(args.start_server, args.url) if args.start_server else None
    try:
        results = [
            asyncio.run(run_level(args, args.url, headers, sentences, n)) for n in args.clients
        ]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    table = Table(title=f"live WebSocket load ({args.policy}, {args.rate} words/s per client)")
    for column in ("clients", "sentences", "words/s", "R2W p50 ms", "R2W p90 ms", "R2W p99 ms"):
        table.add_column(column)
    for r in results:
        lat = r["read_to_write_ms"]
        table.add_row(
            str(r["clients"]),
            str(r["sentences"]),
            f"{r['words_written_per_second']:.1f}",
            f"{lat['p50']:.0f}",
            f"{lat['p90']:.0f}",
            f"{lat['p99']:.0f}",
        )
    Console(width=120).print(table)
    write_record(args.out, results, url=args.url, server_model=args.start_server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
