"""The listeners' routes: ``/simul/listen`` (WebSocket), subtitles, the caption page.

They live outside ``/v1`` on purpose: vLLM's ``--api-key`` guards every ``/v1`` path,
and a listener (a browser in the audience, an OBS overlay) has no API key, only the
session's listen token.  The token is checked here, before the WebSocket handshake
is accepted, and refused with the API's error format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

from fastapi import WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from .errors import ApiError
from .listeners import Listener, ListenerHub, ListenerRegistry, error_event
from .subtitles import FORMATS, MEDIA_TYPES, TRACKS, render

STATIC = Path(__file__).parent / "static"
PAGES = {
    "captions": ("captions.html", "text/html"),
    "captions.js": ("captions.js", "text/javascript"),
    "captions.css": ("captions.css", "text/css"),
}
# a Host header that may go into the policy as it is: name or [IPv6], optional port
HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
RELEASE_GRACE = 2.0  # seconds a released listener's last events get before it is cut off
CLOSE_TIMEOUT = 5.0  # a stalled client must not hold the handler in the closing handshake
CLOSE_CODES = {"ended": 1000, "too_slow": 1013}  # 1013: try again later


def refusal(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


async def _write(websocket: WebSocket, listener: Listener) -> None:
    while (message := await listener.queue.get()) is not None:
        await websocket.send_text(message)


async def _read(websocket: WebSocket, listener: Listener) -> None:
    """Until the listener leaves; anything it sends is answered with an error event."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        error = error_event("read_only", "a listener only receives; speak on /v1/simul/realtime")
        listener.offer(json.dumps(error))


async def listen(websocket: WebSocket, registry: ListenerRegistry) -> None:
    """Follow a session: replay of the last finished sentences, then live events."""
    params = websocket.query_params
    try:
        hub = registry.find(params.get("session"), params.get("token"), listening=True)
    except ApiError as err:
        await websocket.send_denial_response(refusal(err))
        return
    await websocket.accept()
    listener = hub.join()
    writer = asyncio.ensure_future(_write(websocket, listener))
    reader = asyncio.ensure_future(_read(websocket, listener))
    released = asyncio.ensure_future(listener.released.wait())
    try:
        await asyncio.wait({writer, reader, released}, return_when=asyncio.FIRST_COMPLETED)
        if released.done() and not (writer.done() or reader.done()):
            # its last events (an error, or the end) go out unless the client is stalled
            await asyncio.wait({writer, reader}, timeout=RELEASE_GRACE)
    finally:
        hub.leave(listener)
        for task in (writer, reader, released):
            task.cancel()
        code = CLOSE_CODES.get(listener.reason or "", 1000)
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(websocket.close(code), CLOSE_TIMEOUT)
        with contextlib.suppress(BaseException):
            await asyncio.gather(writer, reader, released, return_exceptions=True)


def _subtitle_request(name: str, track: str) -> tuple[str, str]:
    session_id, _, fmt = name.rpartition(".")
    if not session_id or fmt not in FORMATS:
        raise ApiError(404, f"subtitles are /simul/subtitles/<session>.vtt or .srt, not {name!r}")
    if track not in TRACKS:
        raise ApiError(400, f"track must be one of {list(TRACKS)}, got {track!r}", param="track")
    return session_id, fmt


def subtitles(registry: ListenerRegistry, name: str, token: str | None, track: str) -> Response:
    """The finished sentences so far (or of an ended session, until they expire)."""
    try:
        session_id, fmt = _subtitle_request(name, track)
        hub: ListenerHub = registry.find(session_id, token, listening=False)
    except ApiError as err:
        return refusal(err)
    filename = f"{session_id}.{track}.{fmt}"
    return PlainTextResponse(
        render(list(hub.finished), fmt, track),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


def content_security_policy(host: str | None) -> str:
    """What the caption page needs, nothing more: its script and style from this
    server, its WebSocket and subtitle requests to it.  ``connect-src 'self'`` does
    not cover ``ws:``/``wss:`` in every browser (CSP level 2), so the host is named."""
    connect = "'self'"
    if host and HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'"
    )


def page(name: str, host: str | None) -> Response:
    """The caption page, its script and style, shipped in the package (no CDN, no
    build), with a policy that lets nothing else run, and no ``Referer`` (the page's
    address carries the listen token)."""
    filename, media_type = PAGES[name]
    headers = {
        "Content-Security-Policy": content_security_policy(host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return FileResponse(STATIC / filename, media_type=media_type, headers=headers)
