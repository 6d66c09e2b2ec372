"""Screenshots of the caption page for the docs: a real talk, a real browser.

Starts ``vllm serve`` with the plugin (by default SmolLM2-135M-Instruct with the
project's adapter), speaks ``examples/sentences.en`` word by word at ``--rate``
words per second, follows the session on ``/simul/captions`` in headless Chromium
(Debian's, driven by Playwright) and saves the page: ``docs/captions.png`` (the
source beside the translation) and ``docs/captions-obs.png`` (``transparent=1``, the
OBS overlay, with a transparent background).

    .venv/bin/python eval/captions_screenshot.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import websockets
from serving import free_port, serve_command, start, stop, wait_healthy

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--adapter", type=Path, default=Path("adapters/exposst-smollm2"))
    parser.add_argument("--source", type=Path, default=Path("examples/sentences.en"))
    parser.add_argument("--rate", type=float, default=2.5, help="source words per second")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    return parser.parse_args(argv)


async def talk(url: str, page_url: str, sentences: list[str], rate: float, out: Path) -> None:
    from playwright.async_api import async_playwright

    async with websockets.connect(f"{url}/v1/simul/realtime") as ws, async_playwright() as pw:
        created = json.loads(await ws.recv())["session"]
        await ws.send(json.dumps({"type": "session.update", "session": {"model": "exposst"}}))
        await ws.recv()
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        query = f"session={created['id']}&token={created['listen_token']}"
        pages = {}
        for name, extra in (("captions.png", "&source=1"), ("captions-obs.png", "&transparent=1")):
            page = await browser.new_page(viewport={"width": 1280, "height": 480})
            await page.goto(f"{page_url}?{query}{extra}")
            pages[name] = page
        for number, sentence in enumerate(sentences):
            words = sentence.split()
            for word in words:
                await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
                await asyncio.sleep(1 / rate)
            if number < len(sentences) - 1:
                await ws.send(json.dumps({"type": "input_text.commit"}))
                while json.loads(await ws.recv())["type"] != "response.output_text.done":
                    pass
        await asyncio.sleep(0.5)  # the last sentence caught mid-way, as a viewer sees it
        for name, page in pages.items():
            transparent = name == "captions-obs.png"
            await page.screenshot(path=str(out / name), omit_background=transparent)
            print(f"wrote {out / name}")
        await browser.close()


def main(argv: list[str] | None = None) -> int:
    from vllm_exposst import models

    args = parse_args(argv)
    sentences = [s for s in args.source.read_text().splitlines() if s.strip()][:4]
    rank = json.loads((args.adapter / "adapter_config.json").read_text())["r"]
    port = free_port()
    extra = ["--enable-lora", "--max-lora-rank", str(rank)]
    extra += ["--lora-modules", f"exposst={args.adapter}"]
    server = start(serve_command(models.resolve_model(args.model), port, extra=extra))
    try:
        wait_healthy(server, f"http://127.0.0.1:{port}")
        base = f"127.0.0.1:{port}"
        asyncio.run(
            talk(f"ws://{base}", f"http://{base}/simul/captions", sentences, args.rate, args.out)
        )
    finally:
        stop([server])
    return 0


if __name__ == "__main__":
    sys.exit(main())
