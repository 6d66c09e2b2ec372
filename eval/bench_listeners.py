"""One speaker, many listeners: the speaker's READ-to-WRITE latency with and without them.

A speaker sends one word at a time to ``/v1/simul/realtime`` at ``--rate`` words per
second and commits each sentence (as ``load_ws.py``); its READ-to-WRITE latency is
the time from sending the word that unlocked a delta to receiving the delta.  Rounds
alternate no listeners and ``--listeners`` listeners on ``/simul/listen`` (run in
``--listener-procs`` separate processes, so that their parsing does not share the
speaker's event loop).  Every listener must receive every delta, waiting and done
event of the speaker, in the speaker's order; the record says how many did, how far
behind the speaker they got each ``done`` (lag), and the server's
``listeners_dropped``.

    .venv/bin/python eval/bench_listeners.py --start-server default \\
        --adapter adapters/exposst-smollm2 --listeners 200 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import websockets
from load_ws import ADAPTER_NAME, SENTENCES
from serving import print_table, serve_command, speak_sentence, start, stop, wait_healthy

from vllm_exposst.evaluation.record import write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="server base (ws://)")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--listener-procs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="(none, listeners) pairs")
    parser.add_argument("--sentences", type=int, default=8, help="sentences per phase")
    parser.add_argument("--rate", type=float, default=2.5, help="source words per second")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--start-server", metavar="MODEL", help="`vllm serve MODEL` first")
    parser.add_argument("--adapter", type=Path, help="with --start-server: serve this LoRA")
    parser.add_argument("--max-model-len", type=int, default=1024, help="with --start-server")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/listeners.json"))
    return parser.parse_args(argv)


def view(event: dict) -> tuple | None:
    """What a listener must see exactly as the speaker did (type, sentence, content)."""
    kind = event["type"]
    if kind == "response.output_text.delta":
        return (kind, event.get("sentence"), event["delta"], event["source_words_read"])
    if kind == "input_text.waiting":
        return (kind, event.get("sentence"), event["source_words_read"])
    if kind == "response.output_text.done":
        return (kind, event.get("sentence"), event["text"])
    return None


def digest(views: list[tuple]) -> str:
    return hashlib.sha256(json.dumps(views).encode()).hexdigest()


# -- listeners (in their own processes) ----------------------------------------------
async def one_listener(url: str, ready: asyncio.Event, out: dict) -> None:
    views: list[tuple] = []
    done_at: dict[int, float] = {}
    try:
        async with websockets.connect(url, max_size=None) as ws:
            async for raw in ws:
                event = json.loads(raw)
                if event["type"] == "listen.started":
                    ready.set()
                elif event["type"] == "session.ended":
                    break
                elif event["type"] == "error":
                    out["error"] = event["error"]
                elif (item := view(event)) is not None:
                    views.append(item)
                    if event["type"] == "response.output_text.done":
                        done_at[event["sentence"]] = time.perf_counter()
    except Exception as exc:  # a refused or dropped connection counts as a failure
        out["error"] = repr(exc)
    finally:
        ready.set()
    out.update(events=len(views), digest=digest(views), done_at=done_at)


def listener_process(url: str, count: int, ready, results) -> None:
    async def run():
        outs = [{} for _ in range(count)]
        readies = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.ensure_future(one_listener(url, r, o)) for r, o in zip(readies, outs)]
        await asyncio.gather(*(r.wait() for r in readies))
        ready.set()
        await asyncio.gather(*tasks)
        return outs

    results.put(asyncio.run(run()))


# -- the speaker ---------------------------------------------------------------------
async def speak(ws, sentences: list[str], rate: float) -> tuple[list[dict], dict]:
    """Word by word at ``rate``, commit, until done; latencies and every event kept."""
    events: list[dict] = []
    during: list[float] = []
    tail: list[float] = []
    done_at: dict[int, float] = {}
    for sentence in sentences:
        sent_at: list[float] = []

        async def receive(sent_at=sent_at) -> None:
            seen = []
            while True:
                event = json.loads(await ws.recv())
                now = time.perf_counter()
                if view(event) is not None:
                    events.append(event)
                if event["type"] == "response.output_text.delta":
                    seen.append(
                        (event["source_words_read"], now - sent_at[event["source_words_read"] - 1])
                    )
                elif event["type"] == "response.output_text.done":
                    done_at[event.get("sentence", len(done_at))] = now
                    for read, latency in seen:
                        (tail if read == len(sent_at) else during).append(latency)
                    return
                elif event["type"] == "error":
                    raise RuntimeError(event["error"])

        receiver = asyncio.ensure_future(receive())
        await speak_sentence(ws, sentence, rate, sent_at)
        await receiver
    return events, {"during": during, "tail": tail, "done_at": done_at}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def stats(args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.url.replace("ws://", "http://")
    return httpx.get(f"{base}/v1/simul/stats", headers=headers, timeout=30).json()


async def phase(args, sentences: list[str], listeners: int) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    session = {"policy": args.policy, **({"model": ADAPTER_NAME} if args.adapter else {})}
    procs, results = [], mp.get_context("spawn").Queue()
    async with websockets.connect(
        f"{args.url}/v1/simul/realtime", additional_headers=headers, max_size=None
    ) as ws:
        created = json.loads(await ws.recv())["session"]
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.recv()
        url = f"{args.url}/simul/listen?session={created['id']}&token={created['listen_token']}"
        context = mp.get_context("spawn")
        shares = [listeners // args.listener_procs] * args.listener_procs
        for i in range(listeners % args.listener_procs):
            shares[i] += 1
        for share in (s for s in shares if s):
            ready = context.Event()
            proc = context.Process(target=listener_process, args=(url, share, ready, results))
            proc.start()
            procs.append((proc, ready))
        for _proc, ready in procs:
            await asyncio.get_running_loop().run_in_executor(None, ready.wait)
        started = time.perf_counter()
        events, timing = await speak(ws, sentences, args.rate)
        wall = time.perf_counter() - started
        await ws.send(json.dumps({"type": "session.close"}))
    outs = []
    for _ in procs:
        outs += await asyncio.get_running_loop().run_in_executor(None, results.get)
    for proc, _ready in procs:
        proc.join()
    expected = digest([view(e) for e in events])
    complete = [o for o in outs if o.get("digest") == expected and "error" not in o]
    lags = [
        at - timing["done_at"][int(sentence)]
        for o in outs
        for sentence, at in o.get("done_at", {}).items()
        if int(sentence) in timing["done_at"]
    ]
    everything = timing["during"] + timing["tail"]
    return {
        "listeners": listeners,
        "sentences": len(sentences),
        "speaker_events": len(events),
        "wall_seconds": wall,
        "read_to_write_ms": {
            "p50": pct(everything, 0.5),
            "p90": pct(everything, 0.9),
            "p99": pct(everything, 0.99),
            "mean": 1000 * statistics.mean(everything) if everything else 0.0,
        },
        "while_speaking_p90_ms": pct(timing["during"], 0.9),
        "listeners_complete_in_order": len(complete),
        "listener_errors": sorted({str(o["error"]) for o in outs if "error" in o})[:5],
        "listener_lag_ms": {"p50": pct(lags, 0.5), "p90": pct(lags, 0.9), "max": pct(lags, 1)},
    }


def start_server(args) -> object:
    """``vllm serve`` with the plugin (and the adapter as ``exposst``), on ``--url``'s port."""
    from vllm_exposst import models

    extra: list[str] = []
    if args.adapter is not None:
        rank = json.loads((args.adapter / "adapter_config.json").read_text())["r"]
        extra = ["--enable-lora", "--max-lora-rank", str(rank)]
        extra += ["--lora-modules", f"{ADAPTER_NAME}={args.adapter}"]
    port = int(args.url.rsplit(":", 1)[-1].strip("/"))
    model = models.resolve_model(args.start_server)
    command = serve_command(model, port, max_model_len=args.max_model_len, extra=extra)
    process = start(command)
    wait_healthy(process, args.url.replace("ws://", "http://"))
    return process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.adapter and not args.start_server:
        raise SystemExit("bench_listeners: --adapter needs --start-server")
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(args.sentences)]
    server = start_server(args) if args.start_server else None
    try:
        asyncio.run(phase(args, sentences[:1], 0))  # warm-up, not measured
        results = []
        for _ in range(args.rounds):
            for count in (0, args.listeners):
                results.append(asyncio.run(phase(args, sentences, count)))
        server_stats = stats(args)
    finally:
        if server is not None:
            stop([server])
    alone = [r["read_to_write_ms"]["p90"] for r in results if r["listeners"] == 0]
    heard = [r["read_to_write_ms"]["p90"] for r in results if r["listeners"] > 0]
    summary = {
        "p90_no_listeners_ms": statistics.median(alone),
        "p90_with_listeners_ms": statistics.median(heard),
        "p90_ratio": statistics.median(heard) / statistics.median(alone),
        "every_listener_every_event_in_order": all(
            r["listeners_complete_in_order"] == r["listeners"] for r in results
        ),
        "listeners_dropped": server_stats.get("listeners_dropped"),
    }
    rows = [
        (
            str(r["listeners"]),
            str(r["sentences"]),
            *(f"{r['read_to_write_ms'][q]:.0f}" for q in ("p50", "p90", "p99")),
            f"{r['listeners_complete_in_order']}/{r['listeners']}",
            f"{r['listener_lag_ms']['p90']:.0f}",
        )
        for r in results
    ]
    columns = ("listeners", "sentences", "R2W p50 ms", "R2W p90 ms", "R2W p99 ms")
    columns += ("complete, in order", "lag p90 ms")
    print_table(f"one speaker ({args.policy}, {args.rate} words/s)", columns, rows)
    print(json.dumps(summary))
    write_record(
        args.out,
        {"phases": results, "summary": summary},
        url=args.url,
        server_model=args.start_server,
        adapter=str(args.adapter) if args.adapter else None,
        dtype="float32",
    )
    return 0 if summary["every_listener_every_event_in_order"] else 1


if __name__ == "__main__":
    sys.exit(main())
