"""Play a talk into a live session: a text file streamed at speaking rate, the server
cutting it into sentences, the translation printed as it grows, sentence by sentence.

    python examples/talk_player.py talk.en
    python examples/talk_player.py talk.en --rate 2.5 --url http://localhost:8000 --model ende \\
        --subtitles talk.vtt

It prints the caption page's address first: open it in a browser (or give it to the
room) to follow the talk live.  With ``--subtitles`` it saves the WebVTT subtitles at
the end.  No browser and no microphone needed: the file stands in for a speech
recognizer's words.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import urllib.request
from urllib.parse import urlencode


class InOrder:
    """Prints sentences one after the other although the server overlaps them: the
    deltas of a later sentence wait until the sentences before it are done."""

    def __init__(self) -> None:
        self.current = 0
        self.pending: dict[int, list[str]] = {}
        self.done: set[int] = set()

    def delta(self, sentence: int, text: str) -> None:
        if sentence == self.current:
            print(text, end="", flush=True)
        else:
            self.pending.setdefault(sentence, []).append(text)

    def finished(self, sentence: int) -> None:
        self.done.add(sentence)
        while self.current in self.done:
            print(flush=True)
            self.current += 1
            print("".join(self.pending.pop(self.current, [])), end="", flush=True)


async def speak(ws, words: list[str], rate: float) -> None:
    for word in words:
        await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
        await asyncio.sleep(1 / rate)
    await ws.send(json.dumps({"type": "session.close"}))  # ends the last sentence


async def play(args: argparse.Namespace) -> str:
    """The talk through one session; returns the session id."""
    import websockets

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with websockets.connect(
        f"{re.sub('^http', 'ws', args.url)}/v1/simul/realtime", additional_headers=headers
    ) as ws:
        session = json.loads(await ws.recv())["session"]
        update = {"model": args.model, "segmentation": "auto"}
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        http = re.sub("^ws", "http", args.url)
        listen = urlencode({"session": session["id"], "token": session["listen_token"]})
        print(f"caption page: {http}/simul/captions?{listen}", file=sys.stderr)
        words = args.talk.read_text(encoding="utf-8").split()
        speaker = asyncio.ensure_future(speak(ws, words, args.rate))
        printer = InOrder()
        async for raw in ws:  # until the server closes after the last sentence's done
            event = json.loads(raw)
            if event["type"] == "response.output_text.delta":
                printer.delta(event["sentence"], event["delta"])
            elif event["type"] == "response.output_text.done":
                printer.finished(event["sentence"])
            elif event["type"] == "error":
                print(f"\n[error: {event['error']['message']}]", file=sys.stderr)
        await speaker
    if args.subtitles:
        query = urlencode({"token": session["listen_token"]})
        url = f"{http}/simul/subtitles/{session['id']}.vtt?{query}"
        with urllib.request.urlopen(url) as reply:
            args.subtitles.write_bytes(reply.read())
        print(f"subtitles: {args.subtitles}", file=sys.stderr)
    return session["id"]


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("talk", type=Path, help="the talk's text (UTF-8)")
    parser.add_argument(
        "--url",
        default=os.environ.get("EXPOSST_URL", "http://localhost:8000"),
        help="the vllm serve address, http:// or ws:// (default: $EXPOSST_URL or localhost:8000)",
    )
    parser.add_argument("--model", default="ende", help="a served adapter or model name")
    parser.add_argument("--rate", type=float, default=2.5, help="words per second")
    parser.add_argument("--api-key", help="the server's --api-key, if any")
    parser.add_argument("--subtitles", type=Path, help="save the WebVTT subtitles here")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    if not args.talk.is_file():
        parser.error(f"{args.talk}: no such file")
    asyncio.run(play(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
