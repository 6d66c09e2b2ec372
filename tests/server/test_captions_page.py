"""The caption page in a real browser: headless Chromium (Debian's), driven by Playwright.

A server on the tiny model, a speaker on its WebSocket, and the page opened with the
session's listen token: the translations the speaker received must appear on the
page, the source beside them, and again after the page's connection is dropped (it
reconnects and gets the finished sentences replayed).  Skipped where
``/usr/bin/chromium`` is missing; ``make test-browser`` installs it and runs this.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from vllm_exposst import models

from .test_listeners import SENTENCES, ListenServer, Speaker

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make test-browser` installs it"
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    srv = ListenServer(base, tmp_path_factory.mktemp("captions") / "serve.log")
    yield srv
    srv.stop()


ROWS = """rows => rows.map(row => ({
    sentence: Number(row.dataset.sentence),
    text: row.querySelector('.text').textContent,
    source: row.querySelector('.source').textContent,
    live: row.classList.contains('live'),
}))"""


# The waits are Playwright locators, not wait_for_function: that compiles its string
# in the page, which the page's Content-Security-Policy (script-src 'self') forbids, as
# it should; the test must not lift the policy (bypass_csp) it is there to live under.


async def rows_when(page, count: int) -> list[dict]:
    """The page's caption rows once ``count`` sentences are shown finished."""
    from playwright.async_api import expect

    await expect(page.locator("#captions .row:not(.live)")).to_have_count(count, timeout=60_000)
    return await page.eval_on_selector_all("#captions .row", ROWS)


async def status_is(page, pattern: str) -> None:
    """Until the page's status line matches ``pattern`` (a regular expression)."""
    from playwright.async_api import expect

    await expect(page.locator("#status")).to_have_text(re.compile(pattern), timeout=60_000)


def test_the_caption_page_shows_what_the_speaker_got_and_reconnects(server, tmp_path):
    from playwright.async_api import async_playwright

    async def scenario():
        async with async_playwright() as playwright, Speaker(server) as speaker:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            requested: list[str] = []  # no CDN: everything from the server itself
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda ws: requested.append(ws.url))
            query = f"session={speaker.id}&token={speaker.token}&source=1&lines=10"
            await page.goto(f"{server.url}/simul/captions?{query}")
            await status_is(page, "^live$")
            first = [await speaker.say(s) for s in SENTENCES[:3]]
            shown = await rows_when(page, 3)
            await page.screenshot(path=str(tmp_path / "captions.png"))
            # drop the page's connection: it reconnects, the replay brings the rows back
            await page.evaluate("window.captionsSocket.close()")
            await status_is(page, "^reconnecting")
            await status_is(page, "^live$")
            later = await speaker.say(SENTENCES[3])
            after = await rows_when(page, 4)
            await browser.close()
            return first, shown, later, after, errors, requested

    first, shown, later, after, errors, requested = asyncio.run(scenario())
    assert not errors
    host = f"127.0.0.1:{server.port}"
    assert requested and all(url.split("/")[2] == host for url in requested), requested
    assert sum("/simul/listen?" in url for url in requested) == 2  # connected, reconnected
    expected = [
        {"sentence": i, "text": done["text"].strip(), "source": SENTENCES[i], "live": False}
        for i, done in enumerate(first)
    ]
    assert shown == expected
    assert all(row["text"] for row in shown)
    # after the reconnect: listen_history (default 20) covers the first three
    assert after == [
        *expected,
        {"sentence": 3, "text": later["text"].strip(), "source": SENTENCES[3], "live": False},
    ]
    if os.environ.get("EXPOSST_CAPTIONS_SCREENSHOT"):
        Path(os.environ["EXPOSST_CAPTIONS_SCREENSHOT"]).write_bytes(
            (tmp_path / "captions.png").read_bytes()
        )
