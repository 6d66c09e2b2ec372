"""``/v1/simul/realtime``: live sessions over WebSocket, events after the OpenAI Realtime API.

Client events: ``session.update`` ({"session": {model, policy, slot_len, mode,
source_lang, target_lang, refeed, segmentation, max_sentence_words,
sentence_pause}}), ``input_text.append`` ({"text": ...}, any amount of text up to
``MAX_APPEND_CHARS``; partial words wait for a space or the sentence's end),
``input_text.commit`` (end the sentence in progress) and ``session.close``.
Server events: ``session.created``, ``session.updated``,
``response.output_text.delta`` (``sentence``, ``delta``, ``source_words_read``,
``time`` since the sentence started, ``timestamp``), ``input_text.waiting``
(``sentence``, ``source_words_read``, ``timestamp``: the sentence has written
everything it will write for the source so far and waits for more; sent once each
time it comes to wait, after the deltas before it), ``response.output_text.done``
(``sentence``, ``text``, ``delays``, ``elapsed_ms``, ``tokens_computed``,
``tokens_cached``, ``source``, ``end``) and ``error`` ({"error": {type, code, message,
...}}, with ``sentence`` when one sentence failed).  The connection's input is a talk
(:mod:`.talk`): sentences in sequence, cut by the client's commits or by the server
(``segmentation: auto``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from ..defaults import MAX_APPEND_CHARS
from ..engine import EngineDead, SessionRejected, TargetPiece
from . import metrics
from .context import SIMUL_KEYS, ServerContext
from .engine_death import engine_died
from .errors import RETRY_AFTER_SECONDS, ApiError, api_error
from .inbox import Dropped, Inbox
from .talk import COMMIT, Sentence, Talk

# control characters other than tab, line feed and carriage return; lone surrogates
BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class RealtimeConnection:
    """One client: its settings, its talk (sentences in sequence), and ordered sends."""

    def __init__(self, websocket: WebSocket, context: ServerContext) -> None:
        self.ws, self.context = websocket, context
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.settings: dict[str, Any] = {}
        self.talk = Talk(self._open_sentence, self.describe(), self.send_error)
        self.lock = asyncio.Lock()
        self.hub = context.listeners.open(self.id)  # its listeners (listeners.py)

    async def send(self, event: dict[str, Any]) -> None:
        async with self.lock:
            self.hub.publish(event)  # to the listeners too, in the same order (never waits)
            await self.ws.send_json(event)

    async def send_error(
        self,
        exc: BaseException,
        event_type: str | None = None,
        sentence: int | None = None,
        **details: Any,
    ) -> None:
        await self.send(error_event(exc, event_type, sentence, **details))

    def describe(self) -> dict[str, Any]:
        config = self.context.session_config(
            self.settings.get("model"), {k: v for k, v in self.settings.items() if k in SIMUL_KEYS}
        )
        return {
            "id": self.id,
            "model": self.settings.get("model") or self.context.served_models[0],
            **{key: getattr(config, key) for key in SIMUL_KEYS},
        }

    # -- client events --------------------------------------------------------------
    async def on_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            raise ApiError(400, "session.update needs a 'session' object", param="session")
        unknown = sorted(set(update) - {"model", *SIMUL_KEYS})
        if unknown:
            raise ApiError(400, f"unknown session field(s) {unknown}", param="session")
        candidate = {**self.settings, **update}
        previous, self.settings = self.settings, candidate
        try:
            described = self.describe()  # validates model and options
            if self.talk.in_progress and described["segmentation"] != self.talk.segmentation:
                raise ApiError(
                    400,
                    "segmentation changes between sentences: commit the sentence in progress first",
                    code="sentence_in_progress",
                    param="segmentation",
                )
        except Exception:
            self.settings = previous
            raise
        self.talk.configure(described)
        await self.send({"type": "session.updated", "session": described})

    async def on_append(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "input_text.append needs a string 'text'", param="text")
        if len(text) > MAX_APPEND_CHARS:
            raise ApiError(
                400,
                f"an append has at most {MAX_APPEND_CHARS} characters, this one "
                f"{len(text)}; nothing of it was used (send it in smaller pieces)",
                code="input_too_large",
                param="text",
            )
        bad = BAD_TEXT.search(text)
        if bad:
            raise ApiError(
                400,
                f"the text has a control character or a lone surrogate "
                f"(U+{ord(bad.group()):04X} at {bad.start()}); nothing of it was used",
                code="invalid_text",
                param="text",
            )
        await self.talk.append(text)

    async def on_commit(self, event: dict[str, Any]) -> None:
        ended = await self.talk.end_sentence(COMMIT)
        if not ended and not self.talk.auto:  # auto: the server may have ended it already
            raise ApiError(400, "nothing to commit: append source text first", code="empty_source")

    async def _open_sentence(self, index: int) -> Sentence:
        """Sentence ``index``: its engine session, and a task sending its events."""
        config = self.context.session_config(
            self.settings.get("model"), {k: v for k, v in self.settings.items() if k in SIMUL_KEYS}
        )
        try:
            session = await self.context.engine.open(config)
        except SessionRejected:
            metrics.SESSIONS_REJECTED.inc()
            raise
        metrics.ACTIVE_SESSIONS.inc()
        sentence = Sentence(index, session, self.context.source_token_budget(config))
        sentence.on_word = self.hub.source_word  # listeners see the source as it arrives
        sentence.task = asyncio.ensure_future(self._forward(sentence))
        return sentence

    async def _send_delta(self, sentence: Sentence, piece: TargetPiece) -> None:
        if not piece.text:  # tokens of a character still unfinished: nothing to show yet
            return
        await self.send(
            {
                "type": "response.output_text.delta",
                "sentence": sentence.index,
                "delta": piece.text,
                "source_words_read": piece.source_words_read,
                "time": round(piece.time, 4),
                "timestamp": time.time(),
            }
        )

    async def _forward(self, sentence: Sentence) -> None:
        """Send the sentence's pieces as deltas as they come, ``input_text.waiting``
        each time the session comes to wait for more source, then the summary."""
        session = sentence.session
        pieces = aiter(session)
        next_piece = asyncio.ensure_future(anext(pieces))
        # watch the session until it waits for source; once that was announced, watch
        # the source until it changes (then the session may write and wait again)
        watch: asyncio.Future | None = asyncio.ensure_future(session.wait_idle())
        announced = False
        try:
            while True:
                await asyncio.wait(
                    [f for f in (next_piece, watch) if f is not None],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if next_piece.done():
                    try:
                        piece = next_piece.result()
                    except StopAsyncIteration:
                        break
                    await self._send_delta(sentence, piece)
                    next_piece = asyncio.ensure_future(anext(pieces))
                elif announced:  # the source changed since the last waiting event
                    announced = False
                    watch = asyncio.ensure_future(session.wait_idle())
                elif session.waiting_for_source:
                    # everything written for this source is queued by now: take it
                    # (before any await, so that the count and the pieces agree)
                    sentence.changed.clear()
                    words, ready = len(sentence.words), session.pending_pieces()
                    for piece in ready:
                        await self._send_delta(sentence, piece)
                    await self.send(
                        {
                            "type": "input_text.waiting",
                            "sentence": sentence.index,
                            "source_words_read": words,
                            "timestamp": time.time(),
                        }
                    )
                    announced = True
                    watch = asyncio.ensure_future(sentence.changed.wait())
                elif session.ended:
                    watch = None  # the pieces left and the end come through next_piece
                else:  # new source arrived before this task saw the session wait
                    watch = asyncio.ensure_future(session.wait_idle())
            result = await session.result()
            metrics.observe_result(result)
            tokens = await self.context.engine.tokens_computed(result.request_ids)
            await self.send(
                {
                    "type": "response.output_text.done",
                    "sentence": sentence.index,
                    "text": result.text,
                    "delays": result.delays,
                    "elapsed_ms": [round(1000 * t, 1) for t in result.elapsed],
                    "tokens_computed": tokens,
                    "tokens_cached": result.tokens_cached,
                    "source": sentence.source,
                    "end": sentence.end or "target_limit",
                }
            )
        except WebSocketDisconnect:
            self.talk.gone = True  # the client left; close() frees the sessions
        except Exception as exc:  # the session failed (or sending did: the client left)
            try:
                await self.send_error(exc, sentence=sentence.index)
            except Exception:
                self.talk.gone = True
        finally:
            for task in (next_piece, watch):
                if task is not None and not task.done():
                    task.cancel()
                elif task is not None and not task.cancelled():
                    task.exception()  # seen (an aborted session's error): no log noise
            metrics.ACTIVE_SESSIONS.dec()
            await session.close()
            await self.talk.sent(sentence)

    async def engine_died(self) -> None:
        """The engine core died: an ``engine_dead`` error, then a close frame (1011)."""
        with contextlib.suppress(Exception):
            await self.send_error(
                EngineDead("the engine core died; the server exits to be restarted")
            )
        with contextlib.suppress(Exception):
            await self.ws.close(code=1011, reason="engine dead")

    async def close(self) -> None:
        """Free everything this connection holds (also on a dropped connection)."""
        await self.talk.close()

    async def wait_sentence(self) -> None:
        """``session.close``: end the sentence in progress and send every sentence's end."""
        await self.talk.finish()


def frame_text(message: dict[str, Any]) -> str:
    """A frame's text: text frames as they are, binary frames decoded as UTF-8."""
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    if message.get("text") is not None:
        return message["text"]
    try:
        return (message.get("bytes") or b"").decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(
            400, f"a binary frame that is not UTF-8 text: {err}", code="invalid_utf8"
        ) from None


HANDLERS = {
    "session.update": RealtimeConnection.on_update,
    "input_text.append": RealtimeConnection.on_append,
    "input_text.commit": RealtimeConnection.on_commit,
}


async def read_frames(websocket: WebSocket, inbox: Inbox) -> None:
    """Read every frame as it arrives, whatever the engine's pace (server/inbox.py)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        inbox.put(message)


async def handle_events(connection: RealtimeConnection, inbox: Inbox) -> None:
    """The client's events in order, until ``session.close``."""
    while True:
        message = await inbox.get()
        if isinstance(message, Dropped):
            await connection.send_error(
                ApiError(
                    429,
                    f"{message.frames} event(s) ({message.chars} characters) dropped: the "
                    f"session holds at most {inbox.limit} characters of input the talk has "
                    "not taken yet; send at the speaking rate, or wait for done events",
                    "rate_limit_error",
                    "input_queue_full",
                ),
                dropped_events=message.frames,
                dropped_chars=message.chars,
            )
            continue
        try:
            event = json.loads(frame_text(message))
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ApiError(
                    400, "an event is a JSON object with a string 'type'", code="invalid_event"
                )
        except json.JSONDecodeError as err:
            await connection.send_error(
                ApiError(400, f"malformed JSON event: {err}", code="invalid_json")
            )
            continue
        except ApiError as err:
            await connection.send_error(err)
            continue
        kind = event["type"]
        if kind == "session.close":
            await connection.wait_sentence()
            return
        handler = HANDLERS.get(kind)
        try:
            if handler is None:
                raise ApiError(
                    400,
                    f"unknown event type {kind!r}; expected one of {[*HANDLERS, 'session.close']}",
                    code="invalid_event",
                )
            await handler(connection, event)
        except Exception as exc:
            await connection.send_error(exc, kind)


def error_event(
    exc: BaseException, event_type: str | None = None, sentence: int | None = None, **details: Any
) -> dict[str, Any]:
    """The ``error`` event for ``exc``: its documented code, ``retry_after`` on a 429."""
    error = api_error(exc)
    body = {**error.body()["error"], **details}
    if error.status == 429:
        body["retry_after"] = RETRY_AFTER_SECONDS
    if event_type:
        body["event_type"] = event_type
    event: dict[str, Any] = {"type": "error", "error": body}
    if sentence is not None:
        event["sentence"] = sentence
    return event


def speakers_full_message(limit: int) -> str:
    return (
        f"this server serves {limit} live speakers already (exposst.max_speakers): "
        f"try again in {RETRY_AFTER_SECONDS} s"
    )


async def refuse_speaker(websocket: WebSocket, event: dict[str, Any]) -> None:
    """Past ``max_speakers``: an error ``event`` (realtime: ``too_many_speakers``; the
    alignatt route: ``busy``), then close 1013 (try again later).  An event, not an HTTP
    429 at the handshake, because a browser's WebSocket cannot read a refused
    handshake's status; the speakers already in keep their pace."""
    metrics.SESSIONS_REJECTED.inc()
    with contextlib.suppress(Exception):
        await websocket.send_json(event)
        await websocket.close(code=1013, reason="too many speakers")


async def realtime(websocket: WebSocket, context: ServerContext) -> None:
    await websocket.accept()
    if context.speakers_full:
        error = ApiError(
            429,
            speakers_full_message(context.max_speakers),
            "rate_limit_error",
            "too_many_speakers",
        )
        await refuse_speaker(websocket, error_event(error))
        return
    connection = RealtimeConnection(websocket, context)
    context.connections.add(connection)
    tasks: list[asyncio.Task] = []
    try:
        if engine_died(context.engine.llm):  # between the death and the server's exit
            await connection.engine_died()
            return
        session = {**connection.describe(), "listen_token": connection.hub.token}
        await connection.send({"type": "session.created", "session": session})
        inbox = Inbox(context.engine.options.input_queue_chars)
        tasks = [
            asyncio.ensure_future(read_frames(websocket, inbox)),
            asyncio.ensure_future(handle_events(connection, inbox)),
        ]
        # the reader ends when the client leaves, the handler after session.close
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            with contextlib.suppress(WebSocketDisconnect):
                task.result()  # a sending failure: the client is gone
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        context.connections.discard(connection)
        await connection.close()
        context.listeners.close(connection.hub)  # listeners get session.ended; token revoked
        with contextlib.suppress(Exception):
            await websocket.close()
