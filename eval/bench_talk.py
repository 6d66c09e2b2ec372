"""A long talk through one WebSocket session: latency and server memory over the session.

One client speaks ``--sentences`` sentences into ``/v1/simul/realtime`` with
``segmentation: auto`` (no commits: the server cuts the sentences), one word at a time
at ``--rate`` words per second times ``--speedup`` (time compressed: 2.5 words/s x 4
plays an hour of speech in 15 minutes).  Per sentence it records the latency from
the sentence's last word to its ``done`` event and the resident memory of the server
and its engine processes; it prints a table per block of sentences, writes a JSON
record and a PNG plot of latency and RSS over the session.

    .venv/bin/python eval/bench_talk.py --start-server default --adapter adapters/exposst-smollm2 \
        --sentences 600 --speedup 4
    .venv/bin/python eval/bench_talk.py --start-server default --sentences 5   # a check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
import websockets
from serving import (
    free_port,
    print_table,
    read_sentences,
    serve_command,
    start,
    stop,
    wait_healthy,
)

from vllm_exposst import models
from vllm_exposst.evaluation.plots import pyplot
from vllm_exposst.evaluation.record import write_record

ADAPTER_NAME = "exposst"
SENTENCES = [
    "A man in a blue shirt is standing on a ladder.",
    "Two young children are playing with a dog in the park.",
    "A woman is reading a book near the window.",
    "The old car is parked in front of the house.",
    "Dr. Smith said the results were ready at 3.5 p.m. yesterday.",
    'She asked, "Are you coming tomorrow?" and left.',
    "Several people are waiting at the bus stop in the rain.",
    "A little girl in a pink dress runs along the beach.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="server base (ws://)")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--sentences", type=int, default=600, help="about an hour at 2.5 w/s")
    parser.add_argument("--rate", type=float, default=2.5, help="source words per second")
    parser.add_argument("--speedup", type=float, default=4.0, help="time compression")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--source", type=Path, help="one sentence per line (else built in)")
    parser.add_argument(
        "--start-server", metavar="MODEL", help="start `vllm serve MODEL` first ('default' ok)"
    )
    parser.add_argument(
        "--adapter", type=Path, help="with --start-server: serve this LoRA adapter and speak to it"
    )
    parser.add_argument("--server-pid", type=int, help="without --start-server: RSS of this pid")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/talk.json"))
    return parser.parse_args(argv)


def rss_mib(pid: int | None) -> float | None:
    """Resident MiB of a process and its children (the engine core and its worker)."""
    if pid is None:
        return None
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


async def speak(args: argparse.Namespace, sentences: list[str], pid: int | None) -> list[dict]:
    """Word by word at the (compressed) speaking rate; a receiver notes each ``done``.

    The server cuts the sentences, so a sentence's last word is found from the word
    counts of the sentences before it (their ``done`` events may come in any order)."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    interval = 1.0 / (args.rate * args.speedup)
    words = [word for sentence in sentences for word in sentence.split()]
    sent_at: list[float] = []
    dones: dict[int, dict] = {}
    async with websockets.connect(
        f"{args.url}/v1/simul/realtime", additional_headers=headers, max_size=None
    ) as ws:
        await ws.recv()  # session.created
        session = {"segmentation": "auto", "policy": args.policy}
        if args.adapter:
            session["model"] = ADAPTER_NAME
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.recv()

        async def receive() -> None:
            while sum(done["words"] for done in dones.values()) < len(words):
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    raise RuntimeError(event)
                if event["type"] == "response.output_text.done":
                    dones[event["sentence"]] = {
                        "at": time.perf_counter(),
                        "words": len(event["source"].split()),
                        "end": event["end"],
                        "rss_mib": rss_mib(pid),
                        "tokens_computed": event["tokens_computed"],
                    }

        receiver = asyncio.ensure_future(receive())
        for word in words:
            sent_at.append(time.perf_counter())
            await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
            await asyncio.sleep(interval)
        await ws.send(json.dumps({"type": "input_text.commit"}))  # the last sentence
        await asyncio.wait_for(receiver, 600)
        await ws.send(json.dumps({"type": "session.close"}))
    rows, offset = [], 0
    for index in sorted(dones):
        done = dones[index]
        offset += done["words"]
        latency = 1000 * (done.pop("at") - sent_at[offset - 1])
        rows.append({"sentence": index, "latency_ms": latency, **done})
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    index = [row["sentence"] for row in rows]
    top.plot(index, [row["latency_ms"] for row in rows], ".", markersize=3)
    top.set_ylabel("last word -> done (ms)")
    top.set_title(title)
    if rows and rows[0]["rss_mib"] is not None:
        bottom.plot(index, [row["rss_mib"] for row in rows])
        bottom.ticklabel_format(axis="y", useOffset=False)
    bottom.set_ylabel("server RSS (MiB)")
    bottom.set_xlabel("sentence")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def blocks(rows: list[dict], parts: int = 6) -> list[tuple[str, ...]]:
    """Table rows: sentences in ``parts`` blocks, median/p90 latency and RSS at the end."""
    size = max(1, len(rows) // parts)
    table = []
    for first in range(0, len(rows), size):
        block = rows[first : first + size]
        latencies = sorted(row["latency_ms"] for row in block)
        rss = block[-1]["rss_mib"]
        table.append(
            (
                f"{block[0]['sentence']}-{block[-1]['sentence']}",
                f"{statistics.median(latencies):.0f}",
                f"{latencies[int(0.9 * (len(latencies) - 1))]:.0f}",
                "-" if rss is None else f"{rss:.0f}",
            )
        )
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pool = read_sentences(args.source, SENTENCES)
    sentences = [pool[i % len(pool)] for i in range(args.sentences)]
    server, pid = None, args.server_pid
    if args.adapter and not args.start_server:
        raise SystemExit("bench_talk: --adapter needs --start-server")
    if args.start_server:
        port = free_port()
        args.url = f"ws://127.0.0.1:{port}"
        extra: list[str] = []
        if args.adapter:
            rank = json.loads((args.adapter / "adapter_config.json").read_text())["r"]
            extra = ["--enable-lora", "--max-lora-rank", str(rank)]
            extra += ["--lora-modules", f"{ADAPTER_NAME}={args.adapter}"]
        model = models.resolve_model(args.start_server)
        server = start(serve_command(model, port, extra=extra))
        wait_healthy(server, args.url.replace("ws://", "http://"))
        pid = server.pid
    try:
        rows = asyncio.run(speak(args, sentences, pid))
    finally:
        if server is not None:
            stop([server])
    title = f"one talk, {len(rows)} sentences ({args.policy}, {args.rate} words/s x {args.speedup})"
    print_table(title, ("sentences", "latency p50 ms", "latency p90 ms", "RSS MiB"), blocks(rows))
    png = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, png, title)
    write_record(
        args.out,
        rows,
        url=args.url,
        server_model=args.start_server,
        adapter=str(args.adapter) if args.adapter else None,
        rate=args.rate,
        speedup=args.speedup,
        policy=args.policy,
        plot=str(png),
    )
    print(f"record: {args.out}, plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
