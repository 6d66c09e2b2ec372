"""Two ExPosST engines against one on this machine: sessions/s and READ-to-WRITE latency.

One engine: one ``vllm serve`` bound to all the cores given (``--cores``).  Two
engines: two ``vllm serve`` processes, each bound to its half of the cores
(``VLLM_CPU_OMP_THREADS_BIND``), clients spread over them round-robin (what
``deploy/nginx.conf``'s ``least_conn`` does for equal sessions).  Each client opens a
WebSocket session per sentence, sends its words at ``--rate`` words/s, commits and
waits for ``done``.  Both set-ups see the same clients and sentences, after one
untimed warm-up session per engine.

    .venv/bin/python eval/bench_two_engines.py --model tiny-llama --clients 8 16 --rate 50

Caveat: on a 2-core machine the two engines share the two cores (and anything else
running there); compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets
from serving import free_port, print_table, serve_command, speak_sentence, start, stop, wait_healthy

from vllm_exposst.evaluation.record import write_record

SENTENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two young children are playing with a dog in the park.",
    "A woman is reading a book near the window.",
    "The old car is parked in front of the house.",
]
TIMEOUT = 300.0  # seconds: the most any one event may take


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="checkpoint, 'default' or tiny-*")
    parser.add_argument("--clients", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--sentences-per-client", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="source words per second")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--cores", default="0-1", help="CPU ids for the engines, as 'A-B'")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/two_engines.json"))
    return parser.parse_args(argv)


def start_server(model: Path, bind: str) -> tuple[subprocess.Popen, str]:
    """``vllm serve`` with the plugin on a free loopback port, bound to CPUs ``bind``."""
    port = free_port()
    command = serve_command(model, port, max_model_len=1024)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": bind}
    return start(command, env), f"127.0.0.1:{port}"


async def one_sentence(addr: str, sentence: str, args: argparse.Namespace, out: dict) -> None:
    """A fresh session: words at ``rate``, commit, deltas until ``done``."""
    url = f"ws://{addr}/v1/simul/realtime"
    async with websockets.connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        await asyncio.wait_for(ws.recv(), TIMEOUT)  # session.created
        update = {"type": "session.update", "session": {"policy": args.policy}}
        await ws.send(json.dumps(update))
        await asyncio.wait_for(ws.recv(), TIMEOUT)  # session.updated
        sent_at: list[float] = []

        async def receive() -> None:
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if event["type"] == "response.output_text.delta":
                    read = event["source_words_read"]
                    out["latencies"].append(time.perf_counter() - sent_at[read - 1])
                elif event["type"] == "response.output_text.done":
                    out["words"] += len(event["text"].split())
                    return
                elif event["type"] == "error":
                    raise RuntimeError(event["error"])

        receiver = asyncio.ensure_future(receive())
        await speak_sentence(ws, sentence, args.rate, sent_at)
        await receiver
        await ws.send(json.dumps({"type": "session.close"}))
    out["sessions"] += 1


async def run_level(addrs: list[str], clients: int, args: argparse.Namespace) -> dict:
    """``clients`` clients, client ``i`` on server ``i % len(addrs)``; bounded in count."""
    out: dict = {"latencies": [], "words": 0, "sessions": 0}

    async def client(i: int) -> None:
        for j in range(args.sentences_per_client):
            sentence = SENTENCES[(i * args.sentences_per_client + j) % len(SENTENCES)]
            await one_sentence(addrs[i % len(addrs)], sentence, args, out)

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    ordered = sorted(out["latencies"])

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "engines": len(addrs),
        "clients": clients,
        "sessions": out["sessions"],
        "wall_seconds": wall,
        "sessions_per_second": out["sessions"] / wall,
        "target_words_per_second": out["words"] / wall,
        "read_to_write_ms": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "mean": 1000 * statistics.mean(ordered),
        },
    }


def cpu_halves(cores: str) -> tuple[str, str]:
    """'0-1' -> ('0', '1'); '0-7' -> ('0-3', '4-7')."""
    low, high = (int(x) for x in cores.split("-"))
    mid = low + (high - low + 1) // 2
    part = lambda a, b: str(a) if a == b else f"{a}-{b}"  # noqa: E731
    return part(low, mid - 1), part(mid, high)


def main(argv: list[str] | None = None) -> int:

    from vllm_exposst import models

    args = parse_args(argv)
    model = models.resolve_model(args.model)
    results = []
    for binds in ([args.cores], list(cpu_halves(args.cores))):
        servers = [start_server(model, bind) for bind in binds]
        try:
            for process, addr in servers:
                wait_healthy(process, f"http://{addr}")
            addrs = [addr for _, addr in servers]
            # warm-up, not timed: each engine's first session loads the scheduler's
            # word table and the prompt template
            asyncio.run(asyncio.wait_for(run_level(addrs, len(addrs), args), 3600))
            for clients in args.clients:
                level = asyncio.run(asyncio.wait_for(run_level(addrs, clients, args), 3600))
                results.append({**level, "cpu_bind": binds})
        finally:
            stop([process for process, _ in servers])
    one = {r["clients"]: r for r in results if r["engines"] == 1}
    rows = [
        (
            str(r["engines"]),
            str(r["clients"]),
            f"{r['sessions_per_second']:.3f}",
            f"{r['sessions_per_second'] / one[r['clients']]['sessions_per_second']:.2f}",
            f"{r['read_to_write_ms']['p50']:.0f}",
            f"{r['read_to_write_ms']['p90']:.0f}",
        )
        for r in results
    ]
    columns = ("engines", "clients", "sessions/s", "ratio", "R2W p50 ms", "R2W p90 ms")
    print_table(
        f"two engines vs one ({args.policy}, {args.rate} words/s per client)", columns, rows
    )
    write_record(args.out, results, model=str(args.model), cores=args.cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
