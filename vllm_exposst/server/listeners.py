"""Listeners: read-only followers of a live session, fed from the speaker's own events.

Each speaker's WebSocket session has one :class:`ListenerHub`.  Every event sent to
the speaker is published to the hub (:meth:`ListenerHub.publish`, synchronous: it
never waits for a listener), which names its sentence, keeps the finished sentences
(for listeners that join late and for subtitles, both bounded) and offers one JSON
copy to every listener's queue.  A listener whose queue is full is dropped with an
``error`` event, so neither the speaker nor the other listeners ever wait for it.
Listening costs no engine compute: nothing here reaches the engine.

Who may listen: ``session.created`` gives the speaker a listen token
(``secrets.token_urlsafe``), one per session.  It opens listeners on that session
only, while the session lives, and downloads its subtitles until they expire.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ..defaults import (
    LISTEN_ENDED_SESSIONS,
    LISTEN_HISTORY,
    LISTEN_QUEUE,
    MAX_LISTENERS,
    SUBTITLES_KEEP_SECONDS,
    SUBTITLES_MAX_SENTENCES,
)
from .errors import ApiError
from .subtitles import Cue

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 random bits
MAX_OPEN_SENTENCES = 64  # sentences in progress tracked at once (older ones are let go)


@dataclass(frozen=True)
class ListenSettings:
    """How much a hub keeps and how far a listener may fall behind."""

    history: int = LISTEN_HISTORY  # finished sentences a listener gets when it joins
    queue: int = LISTEN_QUEUE  # events a listener may have unsent before it is dropped
    keep_after_end: float = SUBTITLES_KEEP_SECONDS  # subtitles downloadable after the end
    max_sentences: int = SUBTITLES_MAX_SENTENCES  # finished sentences kept per session
    max_ended: int = LISTEN_ENDED_SESSIONS  # ended sessions whose subtitles are kept
    max_listeners: int = MAX_LISTENERS  # listeners at once over all sessions

    @classmethod
    def from_options(cls, options: Any) -> ListenSettings:
        """From :class:`~vllm_exposst.options.ExposstOptions` (missing fields: defaults)."""
        names = {
            "history": "listen_history",
            "queue": "listen_queue",
            "keep_after_end": "subtitles_keep",
            "max_sentences": "subtitles_max_sentences",
            "max_listeners": "max_listeners",
        }
        values = {
            key: getattr(options, name) for key, name in names.items() if hasattr(options, name)
        }
        return cls(**values)


def error_event(code: str, message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"message": message, "type": type_, "param": None, "code": code},
    }


class Listener:
    """One listener's queue of JSON messages; ``None`` ends it."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.limit = limit
        self.released = asyncio.Event()  # the hub let go of it: dropped or session ended
        self.reason: str | None = None  # "too_slow" or "ended"

    def offer(self, message: str) -> bool:
        """Queue a message unless the listener is ``limit`` messages behind."""
        if self.queue.qsize() >= self.limit:
            return False
        self.queue.put_nowait(message)
        return True

    def release(self, final: list[str], reason: str, discard: bool) -> None:
        """Last messages (past the limit), then the end; ``discard`` drops the unsent ones."""
        while discard and not self.queue.empty():
            self.queue.get_nowait()
        for message in final:
            self.queue.put_nowait(message)
        self.queue.put_nowait(None)
        self.reason = reason
        self.released.set()


@dataclass
class _Open:
    """A sentence in progress: the source words and translation seen so far."""

    index: int
    words: list[str] = field(default_factory=list)
    first_word_at: float | None = None  # session clock
    text: str = ""


class ListenerHub:
    """One speaker's session as seen by its listeners."""

    def __init__(
        self,
        session_id: str,
        settings: ListenSettings,
        clock: Callable[[], float] = time.monotonic,
        counters: dict[str, int] | None = None,
    ) -> None:
        self.session_id = session_id
        self.counters = counters if counters is not None else {}  # the server's totals
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.settings = settings
        self.clock = clock
        self.started = clock()
        self.ended_at: float | None = None  # clock() when the speaker's session ended
        self._ended = ""  # the session.ended message, once it ended
        self.session: dict[str, Any] = {}  # the speaker's settings, as last described
        self.finished: deque[Cue] = deque(maxlen=settings.max_sentences)
        self.finished_count = 0  # all finished sentences, also those no longer kept
        self.open: dict[int, _Open] = {}
        self.listeners: set[Listener] = set()
        self.dropped = 0  # listeners dropped for falling behind
        self._done = 0  # done events seen: the sentence of events that name none

    def now(self) -> float:
        """Seconds on the session's clock (since the speaker's session was created)."""
        return round(self.clock() - self.started, 3)

    # -- the speaker's side ----------------------------------------------------------
    def source_word(self, index: int, word: str) -> None:
        """A source word the speaker's sentence ``index`` took (talk.Sentence.on_word)."""
        sentence = self._sentence(index)
        if sentence.first_word_at is None:
            sentence.first_word_at = self.now()
        sentence.words.append(word)
        event = {"type": "input_text.words", "sentence": index, "words": [word]}
        self._broadcast({**event, "time": self.now()})

    def publish(self, event: dict[str, Any]) -> None:
        """An event sent to the speaker, fanned out to the listeners (never waits)."""
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            self.session = {
                k: v for k, v in event.get("session", {}).items() if k != "listen_token"
            }
            if kind == "session.created":
                return
        out = dict(event)
        if kind in ("response.output_text.delta", "input_text.waiting"):
            index = event.get("sentence", self._done)
            out["sentence"] = index
            if kind == "response.output_text.delta":
                self._sentence(index).text += event.get("delta", "")
        elif kind == "response.output_text.done":
            out.update(self._finish(event))
        self._broadcast(out)

    def _finish(self, event: dict[str, Any]) -> dict[str, Any]:
        """Keep a finished sentence as a cue; the fields its ``done`` event gains."""
        index = event.get("sentence", self._done)
        self._done = max(self._done, index + 1)
        sentence = self.open.pop(index, None) or _Open(index)
        source = event.get("source")
        if not isinstance(source, str):
            source = " ".join(sentence.words)
        end = self.now()
        start = sentence.first_word_at if sentence.first_word_at is not None else end
        text = event.get("text")
        cue = Cue(index, start, end, source, text if isinstance(text, str) else sentence.text)
        self.finished.append(cue)
        self.finished_count += 1
        return {"sentence": index, "source": source, "cue": {"start": start, "end": end}}

    def _sentence(self, index: int) -> _Open:
        if index not in self.open:
            self.open[index] = _Open(index)
            while len(self.open) > MAX_OPEN_SENTENCES:  # sentences that never finished
                del self.open[min(self.open)]
        return self.open[index]

    def _broadcast(self, event: dict[str, Any]) -> None:
        message = json.dumps(event)
        for listener in list(self.listeners):
            if not listener.offer(message):
                self._drop(listener)

    def _drop(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        self.dropped += 1
        self.counters["listeners_dropped"] = self.counters.get("listeners_dropped", 0) + 1
        error = error_event(
            "listener_too_slow",
            f"this listener fell {listener.limit} events behind the speaker and was "
            "dropped; reconnect to follow again (the last finished sentences come first)",
            "rate_limit_error",
        )
        listener.release([json.dumps(error)], "too_slow", discard=True)

    # -- the listeners' side ---------------------------------------------------------
    def join(self) -> Listener:
        """A new listener: what it missed (bounded), then every live event."""
        listener = Listener(self.settings.queue)
        history = list(
            islice(self.finished, max(0, len(self.finished) - self.settings.history), None)
        )
        replay: list[dict[str, Any]] = [
            {
                "type": "listen.started",
                "session": self.session,
                "sentences_finished": self.finished_count,
                "replayed": len(history),
                "time": self.now(),
            }
        ]
        for cue in history:
            replay.append(
                {
                    "type": "response.output_text.done",
                    "sentence": cue.sentence,
                    "text": cue.text,
                    "source": cue.source,
                    "cue": {"start": cue.start, "end": cue.end},
                    "replay": True,
                }
            )
        for index in sorted(self.open):  # sentences in progress, as far as they got
            sentence = self.open[index]
            if sentence.words:
                replay.append(
                    {"type": "input_text.words", "sentence": index, "words": sentence.words}
                )
            if sentence.text:
                replay.append(
                    {
                        "type": "response.output_text.delta",
                        "sentence": index,
                        "delta": sentence.text,
                    }
                )
        for event in replay[1:]:
            event["replay"] = True
        for event in replay:  # replay may pass the limit: it is bounded by the history
            listener.queue.put_nowait(json.dumps(event))
        if self.ended_at is None:
            self.listeners.add(listener)
        else:  # it ended while this listener's handshake was under way
            listener.release([self._ended], "ended", discard=False)
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def end(self, reason: str = "the speaker's session closed") -> None:
        """The speaker's session is over: listeners get ``session.ended`` and close."""
        if self.ended_at is not None:
            return
        self.ended_at = self.clock()
        event = {
            "type": "session.ended",
            "reason": reason,
            "sentences_finished": self.finished_count,
            "time": self.now(),
        }
        self._ended = json.dumps(event)
        for listener in list(self.listeners):
            listener.release([self._ended], "ended", discard=False)
        self.listeners.clear()
        self.open.clear()


def _same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())


class ListenerRegistry:
    """The hubs of live sessions, and of ended ones until their subtitles expire."""

    def __init__(self, settings: ListenSettings, clock: Callable[[], float] = time.monotonic):
        self.settings, self.clock = settings, clock
        self.hubs: dict[str, ListenerHub] = {}
        self.counters = {"listeners_dropped": 0}

    def stats(self) -> dict[str, int]:
        """For ``/v1/simul/stats``: live sessions' listeners, drops since the start."""
        live = [hub for hub in self.hubs.values() if hub.ended_at is None]
        return {
            "listeners": self.listening(),
            "listened_sessions": sum(1 for hub in live if hub.listeners),
            "subtitle_sessions": len(self.hubs),
            **self.counters,
        }

    def open(self, session_id: str) -> ListenerHub:
        self.purge()
        hub = ListenerHub(session_id, self.settings, self.clock, self.counters)
        self.hubs[session_id] = hub
        return hub

    def close(self, hub: ListenerHub, reason: str = "the speaker's session closed") -> None:
        """End the hub: its token no longer opens listeners; subtitles stay for a while."""
        hub.end(reason)
        self.purge()

    def purge(self) -> None:
        """Forget ended sessions past ``keep_after_end``, and all but the newest ``max_ended``."""
        now = self.clock()
        ended = sorted(
            (hub for hub in self.hubs.values() if hub.ended_at is not None),
            key=lambda hub: hub.ended_at,
        )
        excess = len(ended) - self.settings.max_ended
        for number, hub in enumerate(ended):
            if number < excess or now - hub.ended_at > self.settings.keep_after_end:
                del self.hubs[hub.session_id]

    def find(self, session_id: str | None, token: str | None, listening: bool) -> ListenerHub:
        """The hub this token opens, or the :class:`ApiError` to refuse with.

        A wrong token and an unknown session get the same answer, so a token tells
        nothing about other sessions."""
        if not session_id or not token:
            raise ApiError(
                401,
                "listening needs the session's id and its listen token "
                "(?session=...&token=..., from the speaker's session.created)",
                "authentication_error",
                "missing_listen_token",
                "token",
            )
        self.purge()
        hub = self.hubs.get(session_id)
        if hub is None or not _same(hub.token, token):
            raise ApiError(
                403,
                "this listen token does not open this session",
                "authentication_error",
                "invalid_listen_token",
                "token",
            )
        if listening and hub.ended_at is not None:
            raise ApiError(
                410,
                "the session has ended: its listen token no longer opens listeners "
                "(its subtitles can still be downloaded for a while)",
                "invalid_request_error",
                "session_ended",
                "session",
            )
        if listening and self.listening() >= self.settings.max_listeners:
            raise ApiError(
                429,
                f"this server follows {self.settings.max_listeners} listeners already "
                "(exposst.max_listeners): try again later, or download the subtitles",
                "rate_limit_error",
                "too_many_listeners",
            )
        return hub

    def listening(self) -> int:
        """Listeners following live sessions now, over all sessions."""
        return sum(len(hub.listeners) for hub in self.hubs.values() if hub.ended_at is None)
