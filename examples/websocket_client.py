"""Stream a sentence into a live session over the WebSocket, at speaking rate, and
print each word of the translation as it is written.

    python examples/websocket_client.py "A man is walking in the park."
    python examples/websocket_client.py --rate 2.5 --url http://localhost:8000 --model ende "..."

The words go out one by one; ``input_text.commit`` says the sentence is complete.  For a
whole talk that the server cuts into sentences itself, see ``talk_player.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re

import websockets


async def speak(ws, words: list[str], rate: float) -> None:
    """One word every 1/rate seconds, then the commit."""
    for word in words:
        await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
        await asyncio.sleep(1 / rate)
    await ws.send(json.dumps({"type": "input_text.commit"}))


async def main(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with websockets.connect(
        f"{re.sub('^http', 'ws', args.url)}/v1/simul/realtime", additional_headers=headers
    ) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "session.update", "session": {"model": args.model}}))
        speaker = asyncio.ensure_future(speak(ws, args.text.split(), args.rate))
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "response.output_text.delta":  # written while words arrive
                print(event["delta"], end="", flush=True)
            elif event["type"] == "response.output_text.done":
                print(f"\ndelays {event['delays']}")
                break
            elif event["type"] == "error":
                raise SystemExit(f"error: {event['error']['message']}")
        await speaker


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("text")
    parser.add_argument(
        "--url",
        default=os.environ.get("EXPOSST_URL", "http://localhost:8000"),
        help="the vllm serve address, http:// or ws:// (default: $EXPOSST_URL or localhost:8000)",
    )
    parser.add_argument("--model", default="ende", help="a served adapter or model name")
    parser.add_argument("--rate", type=float, default=2.5, help="words per second")
    parser.add_argument("--api-key", help="the server's --api-key, if any")
    asyncio.run(main(parser.parse_args()))
