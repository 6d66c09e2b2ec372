"""Capacity on ``/v1/simul/alignatt`` (WhisperLiveKit's protocol) beside ``/v1/simul/realtime``.

One ``vllm serve`` (flags as ``eval/capacity.py``); for each ``N`` in ``--levels``:
``N`` protocol clients speak at ``--rate`` words/s as WhisperLiveKit's client does (an
``update`` with all committed words after each word, the next one only after the
answer, so a slow answer makes the client send several new words at once; ``is_final``
at the sentence's end), then ``N`` WebSocket speakers (``eval/load_ws.py``) on the same
server, after one warm-up sentence.  READ-to-WRITE on the protocol route: from the word
(the time it was spoken) to the answer that holds new text for it.  The protocol
answers an update once the session has written everything it can for the words so
far, so this counts to the READ's last word, where the realtime route's figure counts
to each delta; an answer slower than the word interval puts the client behind, and the
words it sends together then wait from the time they were spoken.  Speakers
sustained: the largest ``N`` whose p90 is within ``--p90-ms``, per route.  Prints a
table, writes a JSON record.

    .venv/bin/python eval/capacity_alignatt.py --start-server default \\
        --adapter adapters/exposst-smollm2 --source ../shared/data/multi30k/test_2016_flickr.en \\
        --out docs/bench/capacity_alignatt.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import websockets
from load_ws import ADAPTER_NAME, SENTENCES, run_level, server_fields, start_flagged_server
from serving import add_server_flags, free_port, print_table, read_sentences, stop

from vllm_exposst.evaluation.record import write_record

ANSWER_TIMEOUT = 60.0  # seconds a protocol client waits for an answer before it fails


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_flags(parser)
    parser.add_argument("--levels", nargs="+", type=int, default=[8, 16, 24, 32])
    parser.add_argument("--rate", type=float, default=2.5, help="source words/s per speaker")
    parser.add_argument("--p90-ms", type=float, default=1000.0, help="R2W p90 to sustain")
    parser.add_argument("--sentences-per-client", type=int, default=2)
    parser.add_argument("--policy", default="wait-3", help="the server's exposst.policy")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--note", default="", help="kept in the record (what else ran)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/capacity_alignatt.json"))
    return parser.parse_args(argv)


async def protocol_client(
    url: str, preset: str | None, sentences: list[str], rate: float, latencies: list[float]
) -> None:
    """One WhisperLiveKit-like client: words at ``rate``, an update per answer."""
    async with websockets.connect(f"{url}/v1/simul/alignatt", max_size=None) as ws:
        init = {"type": "init", "protocol_version": 1, "source_lang": "en", "target_lang": "de"}
        await ws.send(json.dumps({**init, **({"preset": preset} if preset else {})}))
        reply = json.loads(await ws.recv())
        if reply["type"] != "init_ok":
            raise RuntimeError(reply)
        seq = 0
        for utterance, sentence in enumerate(sentences):
            words = sentence.split()
            start, sent, shown = time.perf_counter(), 0, 0
            spoken_at = [start + i / rate for i in range(len(words))]
            while sent < len(words):
                await asyncio.sleep(max(0.0, spoken_at[sent] - time.perf_counter()))
                sent = sum(1 for t in spoken_at if t <= time.perf_counter())  # said by now
                seq += 1
                update = {
                    "type": "update",
                    "seq": seq,
                    "utterance_id": utterance,
                    "words": [[w, None, None] for w in words[:sent]],
                    "is_final": sent == len(words),
                }
                await ws.send(json.dumps(update))
                try:  # WhisperLiveKit's client waits 15 s, then reconnects
                    answer = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT))
                except TimeoutError:
                    raise RuntimeError(
                        f"no answer to update {seq} (utterance {utterance}, {sent} words) "
                        f"in {ANSWER_TIMEOUT:g} s"
                    ) from None
                if answer["type"] != "translation":
                    raise RuntimeError(answer)
                words_shown = len(answer["committed_text"].split())
                if words_shown > shown and answer["covered_source_units"]:
                    # the word that unlocked it: the last one the answer had read
                    read = min(answer["covered_source_units"], sent)
                    latencies.append(time.perf_counter() - spoken_at[read - 1])
                shown = 0 if answer["final"] else words_shown


def preset_of(args) -> str | None:
    """The ``preset`` a protocol client asks for: the served adapter, else the base model."""
    return ADAPTER_NAME if args.adapter else None


async def protocol_level(args, url: str, sentences: list[str], n: int) -> dict:
    latencies: list[float] = []
    preset = preset_of(args)
    jobs = []
    for i in range(n):
        mine = [
            sentences[(i * args.sentences_per_client + j) % len(sentences)]
            for j in range(args.sentences_per_client)
        ]
        jobs.append(protocol_client(url, preset, mine, args.rate, latencies))
    start = time.perf_counter()
    await asyncio.gather(*jobs)
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    return {
        "clients": n,
        "answers_with_text": len(ordered),
        "wall_seconds": time.perf_counter() - start,
        "read_to_write_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
    }


async def measure(args, url: str) -> list[dict]:
    sentences = read_sentences(args.source, SENTENCES)
    await protocol_client(
        url, preset_of(args), sentences[:1], args.rate, []
    )  # warm-up, not counted
    rows = []
    for n in args.levels:
        alignatt = await protocol_level(args, url, sentences, n)
        realtime = await run_level(args, url, {}, sentences, n)
        rows.append({"clients": n, "alignatt": alignatt, "realtime": realtime})
        print(
            f"{n} speakers: alignatt p90 {alignatt['read_to_write_ms']['p90']:.0f} ms, "
            f"realtime p90 {realtime['read_to_write_ms']['p90']:.0f} ms",
            file=sys.stderr,
        )
        worst = max(alignatt["read_to_write_ms"]["p90"], realtime["read_to_write_ms"]["p90"])
        if worst > args.p90_ms:
            break
    return rows


def sustained(rows: list[dict], route: str, limit: float) -> int:
    return max(
        (r["clients"] for r in rows if r[route]["read_to_write_ms"]["p90"] <= limit), default=0
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = f"ws://127.0.0.1:{free_port()}"
    server = start_flagged_server(args, url, {"policy": args.policy})
    try:
        rows = asyncio.run(measure(args, url))
    finally:
        stop([server])
    table = [
        (
            str(r["clients"]),
            f"{r['alignatt']['read_to_write_ms']['p50']:.0f}",
            f"{r['alignatt']['read_to_write_ms']['p90']:.0f}",
            f"{r['realtime']['read_to_write_ms']['p50']:.0f}",
            f"{r['realtime']['read_to_write_ms']['p90']:.0f}",
        )
        for r in rows
    ]
    columns = ("speakers", "alignatt p50 ms", "alignatt p90 ms", "realtime p50", "realtime p90")
    print_table(f"R2W by route, {args.rate} words/s, {args.policy}", columns, table)
    capacity = {route: sustained(rows, route, args.p90_ms) for route in ("alignatt", "realtime")}
    print(f"sustained within p90 {args.p90_ms:.0f} ms: {capacity}")
    write_record(
        args.out,
        {"levels": rows, "sustained_speakers": capacity},
        **server_fields(args),
        policy=args.policy,
        p90_limit_ms=args.p90_ms,
        note=args.note,
        cpu_count=os.cpu_count(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
