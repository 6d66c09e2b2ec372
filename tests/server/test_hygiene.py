"""Browser and token hygiene: allowed origins on the WebSockets, the caption page's
Content-Security-Policy, and listen tokens kept out of the server's log.

The rules first (no server), then one real ``vllm serve`` (tiny Llama, loopback,
``exposst.allowed_origins`` set) for what a browser or a log reader would see.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from html.parser import HTMLParser

import httpx
import pytest
import websockets
import websockets.exceptions
from uvicorn.logging import AccessFormatter

from vllm_exposst import models
from vllm_exposst.options import ExposstOptions
from vllm_exposst.origins import OriginPolicy
from vllm_exposst.server.listen import content_security_policy
from vllm_exposst.server.redact import TokenRedactor

from .test_listeners import SENTENCES, ListenServer, Speaker, follow
from .test_server import API_KEY

LISTED = "https://captions.example.org"
FOREIGN = "https://evil.example"
TOKEN = "Zq8vX1_-" + "a" * 35  # the shape of a listen token
ACCESS_FORMAT = '%(client_addr)s - "%(request_line)s" %(status_code)s'  # uvicorn's default


# -- the rules ------------------------------------------------------------------------
def test_allowed_origins_are_checked_at_start_up():
    assert ExposstOptions().allowed_origins == []
    assert ExposstOptions(allowed_origins="*").allowed_origins == "*"
    assert ExposstOptions(allowed_origins=[LISTED, "http://localhost:3000"])
    for bad in ("https://x.org", ["x.org"], ["https://x.org/captions"], ["null"], [3], {}):
        with pytest.raises(ValueError, match="exposst.allowed_origins"):
            ExposstOptions.from_additional_config({"exposst": {"allowed_origins": bad}})


def test_no_origin_same_origin_listed_and_star_are_let_in_others_not():
    default = OriginPolicy.from_option([])
    listed = OriginPolicy.from_option(["HTTPS://Captions.Example.org:443/"])
    here = "127.0.0.1:8000"
    cases = [  # headers, default allows, listed allows
        ({"host": here}, True, True),  # not a browser
        ({"origin": "http://127.0.0.1:8000", "host": here}, True, True),
        ({"origin": "https://x.org", "host": "x.org"}, True, True),  # behind a TLS proxy
        ({"origin": "https://x.org", "host": "x.org:443"}, True, True),
        ({"origin": "http://[::1]:8000", "host": "[::1]:8000"}, True, True),
        ({"origin": LISTED, "host": here}, False, True),
        ({"origin": FOREIGN, "host": here}, False, False),
        ({"origin": "http://127.0.0.1:9000", "host": here}, False, False),  # another port
        ({"origin": "http://127.0.0.1.evil.example:8000", "host": here}, False, False),
        ({"origin": "null", "host": here}, False, False),
        ({"origin": "http://127.0.0.1:8000"}, False, False),  # no Host to compare with
    ]
    for headers, by_default, by_list in cases:
        assert default.allows(headers) is by_default, headers
        assert listed.allows(headers) is by_list, headers
    assert OriginPolicy.from_option("*").allows({"origin": "null", "host": here})


def test_the_policy_names_this_host_for_websockets_and_nothing_else():
    policy = directives(content_security_policy("127.0.0.1:8000"))
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", "ws://127.0.0.1:8000", "wss://127.0.0.1:8000"]
    for host in (None, "", "evil; script-src *", "a b"):  # nothing odd goes into the header
        assert directives(content_security_policy(host))["connect-src"] == ["'self'"]


def test_tokens_are_redacted_in_uvicorns_access_and_websocket_lines():
    def line(fmt: str, *args) -> str:
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, fmt, args, None)
        assert TokenRedactor().filter(record)
        access = len(args) == 5  # uvicorn's access formatter unpacks exactly these
        formatter = AccessFormatter(ACCESS_FORMAT, use_colors=False) if access else None
        return (formatter or logging.Formatter("%(message)s")).format(record)

    path = f"/simul/subtitles/sess_1.vtt?token={TOKEN}&track=both"
    access = line('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", path, "1.1", 200)
    assert access == (
        '127.0.0.1:5 - "GET /simul/subtitles/sess_1.vtt?token=[redacted]&track=both '
        'HTTP/1.1" 200 OK'
    )
    handshake = line('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/x?token={TOKEN}")
    assert handshake == '127.0.0.1:5 - "WebSocket /x?token=[redacted]" [accepted]'
    assert TOKEN not in line(f"GET /simul/captions?session=s&token={TOKEN}")


def directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


# -- a real server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    log = tmp_path_factory.mktemp("hygiene") / "serve.log"
    srv = ListenServer(base, log, allowed_origins=[LISTED])
    srv.log_path = log
    yield srv
    srv.stop()


async def handshake(url: str, origin: str | None, **connect) -> tuple[int, dict]:
    """The status and JSON body of a handshake (101 and {} when it opened)."""
    try:
        async with websockets.connect(url, origin=origin, **connect) as ws:
            await ws.recv()  # session.created or listen.started
            return 101, {}
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code, json.loads(refused.response.body)


@pytest.mark.server
def test_a_foreign_page_is_refused_on_both_websockets_at_the_handshake(server):
    key = {"additional_headers": {"Authorization": f"Bearer {API_KEY}"}}

    async def scenario():
        async with Speaker(server) as speaker:  # no Origin header: let in
            realtime = await handshake(f"{server.ws}/v1/simul/realtime", FOREIGN, **key)
            listen = await handshake(speaker.listen_url(), FOREIGN)
            return realtime, listen

    for status, body in asyncio.run(scenario()):
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
        assert FOREIGN in body["error"]["message"]
        assert "allowed_origins" in body["error"]["message"]


@pytest.mark.server
def test_same_origin_and_listed_pages_are_let_in(server):
    key = {"additional_headers": {"Authorization": f"Bearer {API_KEY}"}}
    own = f"http://127.0.0.1:{server.port}"

    async def scenario():
        async with Speaker(server) as speaker:
            return [
                await handshake(url, origin, **extra)
                for origin in (own, LISTED)
                for url, extra in (
                    (f"{server.ws}/v1/simul/realtime", key),
                    (speaker.listen_url(), {}),
                )
            ]

    assert [status for status, _ in asyncio.run(scenario())] == [101] * 4


class Inline(HTMLParser):
    """What a strict policy would block in a page: inline script, style, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.tag = ""

    def handle_starttag(self, tag, attrs):
        self.tag = tag
        self.found += [f"{tag} {name}" for name, _ in attrs if name == "style" or name[:2] == "on"]
        self.found += [f"{tag} {value}" for name, value in attrs if "javascript:" in (value or "")]
        if tag == "style":
            self.found.append("style element")

    def handle_data(self, data):
        if self.tag == "script" and data.strip():
            self.found.append("inline script")


@pytest.mark.server
def test_the_caption_page_has_a_strict_policy_it_can_live_with(server):
    page = httpx.get(f"{server.url}/simul/captions?session=s&token=t")
    assert page.status_code == 200
    policy = directives(page.headers["content-security-policy"])
    here = f"127.0.0.1:{server.port}"
    assert policy["script-src"] == policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", f"ws://{here}", f"wss://{here}"]
    assert policy["default-src"] == ["'none'"]
    assert page.headers["referrer-policy"] == "no-referrer"
    parser = Inline()
    parser.feed(page.text)
    assert parser.found == []
    for name, media_type in (("captions.js", "text/javascript"), ("captions.css", "text/css")):
        assert f'"{name}"' in page.text  # the page's own files, relative to it
        part = httpx.get(f"{server.url}/simul/{name}")
        assert part.status_code == 200 and part.headers["content-type"].startswith(media_type)
        assert part.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" in part.headers
    assert page.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(f"{server.url}/simul/captions.js").text
    assert "eval(" not in script and "new Function" not in script  # no 'unsafe-eval'


@pytest.mark.server
def test_listen_tokens_stay_out_of_the_servers_log(server):
    async def scenario():
        async with Speaker(server) as speaker:
            heard: list[dict] = []
            task = asyncio.ensure_future(follow(speaker.listen_url(), heard))
            while not heard:
                await asyncio.sleep(0.05)
            await speaker.say(SENTENCES[0])
            token = {"token": speaker.token}
            subtitles = httpx.get(f"{server.url}/simul/subtitles/{speaker.id}.vtt", params=token)
            captions = httpx.get(
                f"{server.url}/simul/captions", params={"session": speaker.id, **token}
            )
            refused = await handshake(speaker.listen_url(), FOREIGN)
        await asyncio.wait_for(task, 60)
        return speaker, heard, subtitles, captions, refused

    speaker, heard, subtitles, captions, refused = asyncio.run(scenario())
    assert heard[-1]["type"] == "session.ended" and subtitles.status_code == 200
    assert captions.status_code == 200 and refused[0] == 403
    query = f"session={speaker.id}&token=[redacted]"
    expected = [
        f'"WebSocket /simul/listen?{query}" [accepted]',
        f'"WebSocket /simul/listen?{query}" 403',
        f'"GET /simul/subtitles/{speaker.id}.vtt?token=[redacted] HTTP/1.1" 200',
        f'"GET /simul/captions?{query} HTTP/1.1" 200',
        f"refused a WebSocket on /simul/listen from a page of {FOREIGN!r}",  # for the operator
    ]
    deadline = time.monotonic() + 10
    while not all(line in (log := server.log_path.read_text()) for line in expected):
        assert time.monotonic() < deadline, [line for line in expected if line not in log]
        time.sleep(0.2)
    assert speaker.token not in log
