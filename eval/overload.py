"""Overload: twice as many speakers as the server admits, then the load drops.

Starts ``vllm serve`` with ``exposst.max_speakers`` = ``--capacity`` (the measured
live capacity, ``eval/capacity.py``) and runs three phases of live WebSocket speakers
at ``--rate`` words/s (``eval/load_ws.py``'s measurement of READ-to-WRITE):

1. **at capacity**: ``capacity`` speakers, all admitted: the baseline latency;
2. **overload**: ``2 x capacity`` speakers connect at once.  Past the cap a speaker
   must get an ``error`` event (``too_many_speakers``, ``retry_after``) and a close with
   code 1013, and comes back after ``retry_after`` seconds, as a client that honours it
   does, until it is admitted or the phase ends.  The admitted speakers' latency is
   compared with the baseline;
3. **recovered**: ``capacity / 2`` speakers after the load dropped: all admitted at once.

Every admitted speaker must get every sentence's ``done``; a refusal that is not the
documented event and close counts as unclean.  Prints a table and writes a JSON record
(command, machine, date, versions) and a plot of latency per phase.

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv/bin/python eval/overload.py --start-server default \\
        --adapter adapters/exposst-smollm2 --compiled --capacity 32 \\
        --source ../shared/data/multi30k/test_2016_flickr.en --out docs/bench/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
import websockets.exceptions
from load_ws import (
    SENTENCES,
    client,
    receive_sentence,
    server_fields,
    session_of,
    start_flagged_server,
)
from serving import add_server_flags, free_port, print_table, read_sentences, speak_sentence, stop

from vllm_exposst.evaluation.record import write_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_flags(parser)
    parser.add_argument("--capacity", type=int, default=32, help="exposst.max_speakers")
    parser.add_argument("--rate", type=float, default=2.5, help="source words/s per speaker")
    parser.add_argument("--sentences-per-client", type=int, default=2)
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--retry-for", type=float, default=120.0, help="seconds a refused retries")
    parser.add_argument("--note", default="", help="kept in the record (what else ran)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/overload.json"))
    return parser.parse_args(argv)


@dataclass
class Phase:
    """What one phase's speakers saw."""

    name: str
    speakers: int
    latencies: list[float] = field(default_factory=list)  # every delta's R2W, seconds
    words: list[int] = field(default_factory=list)  # target words per finished sentence
    sentences_sent: int = 0
    admitted_first_try: int = 0
    admitted_after_retry: int = 0
    never_admitted: int = 0
    refusals: int = 0  # refused connection attempts
    unclean_refusals: list[str] = field(default_factory=list)
    sentence_errors: list[str] = field(default_factory=list)  # error events of admitted ones
    retry_after: set[int] = field(default_factory=set)

    def summary(self) -> dict:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

        return {
            "phase": self.name,
            "speakers": self.speakers,
            "admitted_first_try": self.admitted_first_try,
            "admitted_after_retry": self.admitted_after_retry,
            "never_admitted": self.never_admitted,
            "refusals": self.refusals,
            "unclean_refusals": self.unclean_refusals,
            "retry_after": sorted(self.retry_after),
            "sentences_sent": self.sentences_sent,
            "sentences_done": len(self.words),
            "sentence_errors": self.sentence_errors,
            "read_to_write_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        }


async def refusal(ws, phase: Phase) -> float | None:
    """None when ``session.created`` came; else the refusal's ``retry_after`` (seconds),
    after checking it is the documented event and the close 1013."""
    first = json.loads(await ws.recv())
    if first["type"] == "session.created":
        return None
    phase.refusals += 1
    error = first.get("error", {})
    if first["type"] != "error" or error.get("code") != "too_many_speakers":
        phase.unclean_refusals.append(f"first event {first}")
        return 1.0
    phase.retry_after.add(error["retry_after"])
    try:
        await asyncio.wait_for(ws.recv(), 10)
        phase.unclean_refusals.append("an event after too_many_speakers")
    except websockets.exceptions.ConnectionClosed as closed:
        if closed.rcvd is None or closed.rcvd.code != 1013:
            phase.unclean_refusals.append(f"closed with {closed.rcvd}")
    except TimeoutError:
        phase.unclean_refusals.append("no close after too_many_speakers")
    return float(error["retry_after"])


async def speaker(
    url: str, sentences: list[str], args: argparse.Namespace, phase: Phase, deadline: float
) -> None:
    """Connect (again after each refusal, until ``deadline``), then speak every sentence."""
    tries = 0
    while True:
        ws = await websockets.connect(f"{url}/v1/simul/realtime", max_size=None)
        wait = await refusal(ws, phase)
        if wait is None:
            break
        await ws.close()
        tries += 1
        if time.monotonic() + wait > deadline:
            phase.never_admitted += 1
            return
        await asyncio.sleep(wait)
    if tries:
        phase.admitted_after_retry += 1
    else:
        phase.admitted_first_try += 1
    async with ws:
        await ws.send(json.dumps({"type": "session.update", "session": session_of(args)}))
        await ws.recv()  # session.updated
        for sentence in sentences:
            sent_at: list[float] = []
            phase.sentences_sent += 1
            receiver = asyncio.ensure_future(
                receive_sentence(ws, sent_at, phase.latencies, phase.words, phase.latencies)
            )
            await speak_sentence(ws, sentence, args.rate, sent_at)
            try:
                await receiver
            except RuntimeError as err:  # an error event: the sentence is lost
                phase.sentence_errors.append(str(err))
        await ws.send(json.dumps({"type": "session.close"}))


async def run_phase(
    name: str, n: int, url: str, sentences: list[str], args: argparse.Namespace
) -> Phase:
    phase = Phase(name, n)
    deadline = time.monotonic() + args.retry_for
    per = args.sentences_per_client
    jobs = [
        speaker(
            url,
            [sentences[(i * per + j) % len(sentences)] for j in range(per)],
            args,
            phase,
            deadline,
        )
        for i in range(n)
    ]
    await asyncio.gather(*jobs)
    return phase


def wait_until_idle(base: str, timeout: float = 60) -> dict:
    """The server's stats once no speaker is connected (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{base}/v1/simul/stats", timeout=10).json()
        if stats["speakers"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def plot(phases: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [f"{p['phase']}\n{p['speakers']} speakers" for p in phases]
    for q, shift in (("p50", -0.2), ("p90", 0.2)):
        values = [p["read_to_write_ms"][q] for p in phases]
        ax.bar([i + shift for i in range(len(phases))], values, width=0.4, label=f"R2W {q}")
    ax.set_xticks(range(len(phases)), names)
    ax.set_ylabel("READ-to-WRITE, ms (admitted speakers)")
    ax.legend()
    ax.set_title("overload: twice the speakers the server admits")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.capacity < 2:
        raise SystemExit("overload: --capacity must be 2 or more")
    sentences = read_sentences(args.source, SENTENCES)
    url = f"ws://127.0.0.1:{free_port()}"
    base = url.replace("ws://", "http://")
    options = {"max_speakers": args.capacity}
    server = start_flagged_server(args, url, options)
    try:
        asyncio.run(client(url, {}, sentences[:1], args.rate, session_of(args), [], []))  # warm
        plan = [("at capacity", args.capacity), ("overload", 2 * args.capacity)]
        plan.append(("recovered", args.capacity // 2))
        phases, idle = [], []
        for name, n in plan:
            phase = asyncio.run(run_phase(name, n, url, sentences, args))
            phases.append(phase.summary())
            idle.append(wait_until_idle(base))
            print(f"{name}: {json.dumps(phases[-1]['read_to_write_ms'])}", flush=True)
    finally:
        stop([server])
    baseline = phases[0]["read_to_write_ms"]
    for phase in phases:
        phase["p90_over_capacity_p90"] = phase["read_to_write_ms"]["p90"] / baseline["p90"]
    rows = [
        (
            p["phase"],
            str(p["speakers"]),
            f"{p['admitted_first_try']} + {p['admitted_after_retry']}",
            str(p["refusals"]),
            str(len(p["unclean_refusals"])),
            f"{p['sentences_done']}/{p['sentences_sent']}",
            f"{p['read_to_write_ms']['p50']:.0f}",
            f"{p['read_to_write_ms']['p90']:.0f}",
            f"{p['p90_over_capacity_p90']:.2f}",
        )
        for p in phases
    ]
    columns = ("phase", "speakers", "admitted (+ after retry)", "refusals", "unclean")
    columns += ("sentences done", "R2W p50 ms", "R2W p90 ms", "p90 / at capacity")
    title = f"overload, max_speakers {args.capacity}, {args.rate} words/s, {args.policy}"
    print_table(title, columns, rows)
    picture = args.out.with_suffix(".png")
    plot(phases, picture)
    write_record(
        args.out,
        {"phases": phases, "stats_after_each_phase": idle, "plot": str(picture)},
        **server_fields(args),
        note=args.note,
    )
    lost = any(p["sentences_done"] != p["sentences_sent"] for p in phases)
    unclean = any(p["unclean_refusals"] for p in phases)
    return 1 if lost or unclean else 0


if __name__ == "__main__":
    sys.exit(main())
