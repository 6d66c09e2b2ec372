"""``/v1/simul/realtime``: live sessions over WebSocket, events after the OpenAI Realtime API.

Client events: ``session.update`` ({"session": {model, policy, slot_len, mode,
source_lang, target_lang}}), ``input_text.append`` ({"text": ...}, any amount of
text; partial words wait for a space or the commit), ``input_text.commit`` (the
source is complete) and ``session.close``.  Server events: ``session.created``,
``session.updated``, ``response.output_text.delta`` (``delta``,
``source_words_read``, ``time`` since the sentence started, ``timestamp``),
``input_text.waiting`` (``source_words_read``, ``timestamp``: the session has
written everything it will write for the source so far and waits for more; sent
once each time it comes to wait, after the deltas before it),
``response.output_text.done`` (``text``, ``delays``, ``elapsed_ms``,
``tokens_computed``) and ``error`` ({"error": {type, code, message}}).  A new
source after ``done`` starts a fresh sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from ..engine import Session, SessionRejected, TargetPiece
from ..prompts import split_words
from . import metrics
from .context import SIMUL_KEYS, ServerContext
from .errors import ApiError, api_error


@dataclass
class Sentence:
    """The sentence in progress: its session and the source words it was given."""

    session: Session
    words: int = 0  # complete source words pushed
    partial: str = ""  # text after the last whitespace: a word still arriving
    # set when the source changed (a word completed, or the commit): the session may
    # write again, and then wait again
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def push(self, text: str) -> None:
        await self.session.push(text)
        combined = self.partial + text  # counted as Session.push counts
        words = split_words(combined)
        self.partial = words.pop() if combined and not combined[-1].isspace() and words else ""
        if words:
            self.words += len(words)
            self.changed.set()

    async def finish(self) -> None:
        await self.session.finish()
        self.changed.set()


class RealtimeConnection:
    """One client: its settings, the sentence in progress, and ordered sends."""

    def __init__(self, websocket: WebSocket, context: ServerContext) -> None:
        self.ws, self.context = websocket, context
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.settings: dict[str, Any] = {}
        self.sentence: Sentence | None = None
        self.forwarder: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def send(self, event: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_json(event)

    async def send_error(self, exc: BaseException, event_type: str | None = None) -> None:
        error = api_error(exc)
        body = error.body()["error"]
        if error.status == 429:
            body["retry_after"] = 1
        if event_type:
            body["event_type"] = event_type
        await self.send({"type": "error", "error": body})

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
        except Exception:
            self.settings = previous
            raise
        await self.send({"type": "session.updated", "session": described})

    async def on_append(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "input_text.append needs a string 'text'", param="text")
        if self.sentence is None or self.sentence.session.ended:  # ended before the commit
            await self._start_sentence()
        await self.sentence.push(text)

    async def on_commit(self, event: dict[str, Any]) -> None:
        if self.sentence is None:
            raise ApiError(400, "nothing to commit: append source text first", code="empty_source")
        sentence, self.sentence = self.sentence, None
        await sentence.finish()

    async def _start_sentence(self) -> None:
        config = self.context.session_config(
            self.settings.get("model"), {k: v for k, v in self.settings.items() if k in SIMUL_KEYS}
        )
        try:
            session = await self.context.engine.open(config)
        except SessionRejected:
            metrics.SESSIONS_REJECTED.inc()
            raise
        metrics.ACTIVE_SESSIONS.inc()
        self.sentence = Sentence(session)
        self.forwarder = asyncio.ensure_future(self._forward(self.sentence))

    async def _send_delta(self, piece: TargetPiece) -> None:
        await self.send(
            {
                "type": "response.output_text.delta",
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
                    await self._send_delta(piece)
                    next_piece = asyncio.ensure_future(anext(pieces))
                elif announced:  # the source changed since the last waiting event
                    announced = False
                    watch = asyncio.ensure_future(session.wait_idle())
                elif session.waiting_for_source:
                    # everything written for this source is queued by now: take it
                    # (before any await, so that the count and the pieces agree)
                    sentence.changed.clear()
                    words, ready = sentence.words, session.pending_pieces()
                    for piece in ready:
                        await self._send_delta(piece)
                    await self.send(
                        {
                            "type": "input_text.waiting",
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
                    "text": result.text,
                    "delays": result.delays,
                    "elapsed_ms": [round(1000 * t, 1) for t in result.elapsed],
                    "tokens_computed": tokens,
                }
            )
        except WebSocketDisconnect:
            pass  # the client left; close() frees the session
        except Exception as exc:  # the session failed (or sending did: the client left)
            with contextlib.suppress(Exception):
                await self.send_error(exc)
        finally:
            for task in (next_piece, watch):
                if task is not None and not task.done():
                    task.cancel()
            metrics.ACTIVE_SESSIONS.dec()
            await session.close()

    async def close(self) -> None:
        """Free everything this connection holds (also on a dropped connection)."""
        if self.sentence is not None:
            await self.sentence.session.abort()
            self.sentence = None
        if self.forwarder is not None and not self.forwarder.done():
            self.forwarder.cancel()
            with contextlib.suppress(BaseException):
                await self.forwarder

    async def wait_sentence(self) -> None:
        if self.forwarder is not None:
            with contextlib.suppress(BaseException):
                await self.forwarder


HANDLERS = {
    "session.update": RealtimeConnection.on_update,
    "input_text.append": RealtimeConnection.on_append,
    "input_text.commit": RealtimeConnection.on_commit,
}


async def realtime(websocket: WebSocket, context: ServerContext) -> None:
    await websocket.accept()
    connection = RealtimeConnection(websocket, context)
    try:
        await connection.send({"type": "session.created", "session": connection.describe()})
        while True:
            raw = await websocket.receive_text()
            try:
                event = json.loads(raw)
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
                break
            handler = HANDLERS.get(kind)
            try:
                if handler is None:
                    raise ApiError(
                        400,
                        f"unknown event type {kind!r}; expected one of "
                        f"{[*HANDLERS, 'session.close']}",
                        code="invalid_event",
                    )
                await handler(connection, event)
            except Exception as exc:
                await connection.send_error(exc, kind)
    except WebSocketDisconnect:
        pass
    finally:
        await connection.close()
        with contextlib.suppress(Exception):
            await websocket.close()
