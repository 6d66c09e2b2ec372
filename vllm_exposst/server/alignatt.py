"""``/v1/simul/alignatt``: the remote translation protocol WhisperLiveKit speaks (v1).

WhisperLiveKit (``--translation-backend alignatt --alignatt-url ws://HOST/v1/simul/alignatt``)
does the speech recognition and sends text, one connection per listener language, in
the protocol of AlignAtt4LLM's ``alignatt-mt-server``:

- ``init`` {protocol_version: 1, source_lang, target_lang, preset, overrides,
  context_text, history, accepted_target_prefix} -> ``init_ok`` {protocol_version,
  direction, preset, model, session, listen_token, ignored};
- ``update`` {seq, utterance_id, words: [[text, start_ms, end_ms], ...] (the open
  utterance's committed words, all of them each time), tail, clock_ms, is_final} ->
  ``translation`` {seq, utterance_id, final, committed_text, committed_delta,
  buffer_text, covered_source_units, stop_reason};
- ``error`` {code, message}: ``bad_protocol``, ``unsupported_direction`` (with
  ``supported``), ``busy`` (then close 1013), ``processing_failed``.

An utterance is one engine session (a sentence of the talk).  The words of an
update that the session has not had yet are pushed as source; the answer comes when
the session has written everything it can for them (it waits for more source) and
holds the text written so far.  ExPosST never takes back a word it wrote, so
``committed_text`` only grows and ``buffer_text`` is always empty; the unstable
``tail`` is not read (a READ cannot be undone): its words are translated once the
recognizer commits them, so the tail costs its commit delay in latency.  ``is_final``
ends the sentence: the answer is the finished translation.  An utterance that would
pass ``max_sentence_words`` or the position limit is cut there (``final`` on a
partial update, the protocol's server-side rollover); the words past the cut start
the next utterance.  ``accepted_target_prefix`` (a reconnect in mid-utterance) is
honoured by word count: the utterance is translated again and its first N words are
taken as the N words already shown.  ``history`` and ``context_text`` are accepted
and not used yet (sentences are translated on their own; ``ignored`` says so).
Listeners follow the connection with its ``listen_token`` like a realtime speaker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from ..engine import SessionResult
from . import metrics
from .context import ServerContext
from .engine_death import engine_died
from .errors import ApiError
from .realtime import BAD_TEXT, frame_text, refuse_speaker, speakers_full_message
from .talk import Sentence

PROTOCOL_VERSION = 1
# ISO 639-1 codes WhisperLiveKit sends, as the language names our prompts use
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "zh": "Chinese",
}
LANGUAGE_CODES = {name: code for code, name in LANGUAGE_NAMES.items()}
MAX_WORD_CHARS = 200  # a recognizer's word; longer is a bad message, not source


class ProtocolError(Exception):
    """A message the protocol does not allow: an ``error`` event with ``code``."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.details = code, details

    def event(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": str(self), **self.details}


def language_name(value: Any) -> str | None:
    """A language as our prompts name it: ``de`` and ``German`` both give ``German``."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return LANGUAGE_NAMES.get(value.lower().split("-")[0], value.title())


def language_code(name: str) -> str:
    return LANGUAGE_CODES.get(name, name)


def shown_text(prefix: str, text: str) -> str:
    """What the client has been shown: ``prefix`` (accepted before a reconnect), then
    the words of this translation past as many words as the prefix has."""
    if not prefix:
        return text.strip()
    skip = len(prefix.split())
    words = text.split()
    return prefix if len(words) <= skip else f"{prefix} {' '.join(words[skip:])}"


def update_words(message: dict[str, Any]) -> list[str]:
    """The committed words of an ``update`` (``[[text, start_ms, end_ms], ...]``)."""
    raw = message.get("words", [])
    if not isinstance(raw, list):
        raise ProtocolError("bad_protocol", "'words' must be a list of [text, start_ms, end_ms]")
    words: list[str] = []
    for item in raw:
        text = item[0] if isinstance(item, list) and item else item
        if not isinstance(text, str):
            raise ProtocolError("bad_protocol", f"a word must be a string, not {text!r}")
        if len(text) > MAX_WORD_CHARS or BAD_TEXT.search(text):
            raise ProtocolError(
                "bad_protocol",
                f"a word has a control character or more than {MAX_WORD_CHARS} characters",
            )
        words.extend(text.split())  # a recognizer's "word" may hold a space
    return words


class AlignAttConnection:
    """One protocol client: its languages and model, and its open utterance."""

    def __init__(self, websocket: WebSocket, context: ServerContext) -> None:
        self.ws, self.context = websocket, context
        self.id = f"alignatt_{uuid.uuid4().hex[:16]}"
        self.hub = context.listeners.open(self.id)
        self.config: Any = None
        self.started = False
        self.utterance_id: int | None = None
        self.taken = 0  # words of the client's utterance the sentences have had
        self.sentence: Sentence | None = None
        self.sentences = 0  # sentence indices for listeners
        self.prefix = ""  # text shown before a reconnect or a failed session
        self.last_shown = ""  # committed_text of the last partial answer
        self.sent_text = ""  # the open sentence's text so far
        self.rolled = False  # the open sentence holds words past a rollover's cut
        self.carried = 0  # ... this many, from the utterance before (not the client's)

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_json(event)

    # -- init -----------------------------------------------------------------------
    async def on_init(self, message: dict[str, Any]) -> None:
        if self.started:
            raise ProtocolError("bad_protocol", "init was sent already on this connection")
        version = message.get("protocol_version")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                "bad_protocol",
                f"protocol_version {version!r} is not served; this server speaks "
                f"{PROTOCOL_VERSION}",
            )
        preset = message.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise ProtocolError("bad_protocol", "'preset' names a served model or adapter")
        try:
            self.context.adapter_for(preset)
        except Exception as exc:
            known = [*self.context.served_models, *sorted(self.context.engine.adapters())]
            raise ProtocolError("bad_protocol", str(exc), supported_presets=known) from None
        overrides = message.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ProtocolError("bad_protocol", "'overrides' must be an object")
        self.config = self.context.session_config(preset, {})
        self.check_direction(message)
        prefix = message.get("accepted_target_prefix") or ""
        if not isinstance(prefix, str):
            raise ProtocolError("bad_protocol", "'accepted_target_prefix' must be a string")
        self.prefix = prefix.strip()
        ignored = sorted(overrides) + [
            key for key in ("history", "context_text") if message.get(key)
        ]
        self.started = True
        model = preset or self.context.served_models[0]
        self.hub.publish({"type": "session.created", "session": {"id": self.id, "model": model}})
        await self.send(
            {
                "type": "init_ok",
                "protocol_version": PROTOCOL_VERSION,
                "direction": self.direction,
                "preset": preset,
                "model": model,
                "session": self.id,
                "listen_token": self.hub.token,
                "ignored": ignored,
            }
        )

    @property
    def direction(self) -> str:
        return f"{language_code(self.config.source_lang)}-{language_code(self.config.target_lang)}"

    def check_direction(self, message: dict[str, Any]) -> None:
        """The init's languages must be the model's: an adapter translates one pair."""
        wanted = (
            language_name(message.get("source_lang")),
            language_name(message.get("target_lang")),
        )
        have = (self.config.source_lang, self.config.target_lang)
        if wanted != have:
            raise ProtocolError(
                "unsupported_direction",
                f"{message.get('source_lang')!r} -> {message.get('target_lang')!r} is not "
                f"what this model translates ({have[0]} -> {have[1]})",
                supported=[self.direction],
            )

    # -- updates ----------------------------------------------------------------------
    async def on_update(self, message: dict[str, Any]) -> None:
        if not self.started:
            raise ProtocolError("bad_protocol", "send init before the first update")
        seq, utterance = message.get("seq"), message.get("utterance_id")
        if not isinstance(seq, int) or not isinstance(utterance, int):
            raise ProtocolError("bad_protocol", "an update needs integer 'seq' and 'utterance_id'")
        is_final = message.get("is_final", False)
        if not isinstance(is_final, bool):
            raise ProtocolError("bad_protocol", "'is_final' must be true or false")
        words = update_words(message)
        if utterance != self.utterance_id:
            await self.next_utterance(utterance)
        first, new_words = self.taken, words[self.taken :]
        self.taken = max(self.taken, len(words))
        try:
            finished: list[str] = []  # sentences this update's words ended (rollovers)
            covered = 0  # of the utterance's words, those in them
            for at, word in enumerate(new_words, first):
                result = await self.push(word)
                if result is not None:  # cut before this word
                    finished.append(result.text)
                    covered, self.carried = at, 0
            if is_final:  # the utterance's final holds every sentence it ended
                if self.sentence is not None:
                    finished.append((await self.finish()).text)
                text = " ".join(t for t in finished if t)
                await self.answer(seq, final=True, text=text, covered=len(words), reason="final")
                self.utterance_id, self.taken, self.carried = None, 0, 0
            elif finished:  # rollover: the words past the cut start the next utterance
                text = " ".join(t for t in finished if t)
                await self.answer(seq, final=True, text=text, covered=covered, reason="rollover")
                self.rolled = True
                self.carried = len(self.sentence.words) if self.sentence else 0
            else:
                held = len(self.sentence.words) - self.carried if self.sentence else 0
                text = await self.written()
                await self.answer(seq, final=False, text=text, covered=held, reason="waiting")
        except ProtocolError:
            raise
        except Exception as exc:  # the session failed: drop it, keep what was shown
            await self.drop_sentence()
            self.taken, self.carried = 0, 0  # the next update's words start a new session
            raise ProtocolError("processing_failed", f"{type(exc).__name__}: {exc}") from None

    async def next_utterance(self, utterance: int) -> None:
        """A new utterance id.  After a rollover the next id takes the sentence that the
        words past the cut opened; an utterance left without ``is_final`` is ended."""
        if self.rolled:
            self.rolled = False
        elif self.sentence is not None:
            await self.drop_sentence()
            self.prefix = ""
        self.utterance_id, self.taken = utterance, 0

    async def push(self, word: str) -> SessionResult | None:
        """Give the sentence a word.  Where it does not fit (or the sentence has ended at
        its target limit), end the sentence, give the word to the next one, and return
        the ended sentence's result."""
        if self.sentence is None:
            await self.open_sentence()
        sentence = self.sentence
        tokens = sentence.tokens_of(word)
        limit = self.config.max_sentence_words
        full = (
            sentence.session.ended
            or sentence.tokens + tokens > sentence.budget
            or (limit is not None and len(sentence.words) >= limit)
        )
        if full and sentence.words:
            result = await self.finish()
            await self.push(word)
            return result
        if tokens > sentence.budget:
            raise ProtocolError(
                "bad_protocol", f"the word {word[:40]!r} alone passes the model's position limit"
            )
        await sentence.push(word, tokens)
        return None

    async def open_sentence(self) -> None:
        session = await self.context.engine.open(self.config)
        metrics.ACTIVE_SESSIONS.inc()
        self.sentence = Sentence(
            self.sentences, session, self.context.source_token_budget(self.config)
        )
        self.sentence.on_word = self.hub.source_word
        self.sentences += 1
        self.sent_text = ""

    async def written(self) -> str:
        """The sentence's text once it waits for source (or has ended)."""
        if self.sentence is None:
            return ""
        await self.sentence.session.wait_idle()
        for piece in self.sentence.session.pending_pieces():
            self.publish_delta(piece.text, piece.source_words_read, piece.time)
            self.sent_text += piece.text
        return self.sent_text

    async def finish(self) -> SessionResult:
        """End the open sentence and take its result."""
        sentence = self.sentence
        await sentence.finish("final")
        await self.written()
        result = await sentence.session.result()
        metrics.observe_result(result)
        self.hub.publish(
            {
                "type": "response.output_text.done",
                "sentence": sentence.index,
                "text": result.text,
                "delays": result.delays,
                "source": sentence.source,
                "end": "final",
            }
        )
        await self.close_sentence()
        return result

    def publish_delta(self, text: str, words_read: int, elapsed: float) -> None:
        if text and self.sentence is not None:
            self.hub.publish(
                {
                    "type": "response.output_text.delta",
                    "sentence": self.sentence.index,
                    "delta": text,
                    "source_words_read": words_read,
                    "time": round(elapsed, 4),
                    "timestamp": time.time(),
                }
            )

    async def answer(self, seq: int, *, final: bool, text: str, covered: int, reason: str) -> None:
        """The ``translation`` message; ``covered``: the utterance's words it translates."""
        committed = shown_text(self.prefix, text)
        previous = self.last_shown
        delta = committed[len(previous) :] if committed.startswith(previous) else committed
        self.last_shown = "" if final else committed
        if final:
            self.prefix = ""
        await self.send(
            {
                "type": "translation",
                "seq": seq,
                "utterance_id": self.utterance_id,
                "final": final,
                "committed_text": committed,
                "committed_delta": delta,
                "buffer_text": "",
                "covered_source_units": covered,
                "stop_reason": reason,
            }
        )

    async def drop_sentence(self) -> None:
        """Free the sentence without its result; what was shown becomes the prefix."""
        self.prefix = self.last_shown or self.prefix
        self.last_shown = ""
        await self.close_sentence()

    async def close_sentence(self) -> None:
        sentence, self.sentence = self.sentence, None
        if sentence is not None:
            metrics.ACTIVE_SESSIONS.dec()
            await sentence.session.close()

    async def engine_died(self) -> None:
        """The engine core died: ``processing_failed``, then close 1011."""
        with contextlib.suppress(Exception):
            await self.send(
                ProtocolError("processing_failed", "the engine core died; the server exits").event()
            )
        with contextlib.suppress(Exception):
            await self.ws.close(code=1011, reason="engine dead")

    async def close(self) -> None:
        await self.close_sentence()
        self.context.listeners.close(self.hub)


HANDLERS = {"init": AlignAttConnection.on_init, "update": AlignAttConnection.on_update}


async def handle(connection: AlignAttConnection, text: str) -> None:
    """One message, answered or refused with the protocol's error."""
    try:
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProtocolError("bad_protocol", f"malformed JSON: {err}") from None
        if not isinstance(message, dict) or message.get("type") not in HANDLERS:
            raise ProtocolError("bad_protocol", f"a message is an object of type {list(HANDLERS)}")
        await HANDLERS[message["type"]](connection, message)
    except ProtocolError as err:
        await connection.send(err.event())
    except (WebSocketDisconnect, asyncio.CancelledError):
        raise
    except Exception as exc:
        if connection.started:
            await connection.send(ProtocolError("processing_failed", str(exc)).event())
        else:  # an init the server could not take (an unknown model, ...)
            await connection.send(ProtocolError("bad_protocol", str(exc)).event())


async def alignatt(websocket: WebSocket, context: ServerContext) -> None:
    await websocket.accept()
    if context.speakers_full:
        busy = ProtocolError("busy", speakers_full_message(context.max_speakers))
        await refuse_speaker(websocket, busy.event())
        return
    connection = AlignAttConnection(websocket, context)
    context.connections.add(connection)
    try:
        if engine_died(context.engine.llm):
            await connection.engine_died()
            return
        while True:
            try:
                text = frame_text(await websocket.receive())
            except ApiError as err:  # a binary frame that is not UTF-8
                await connection.send(ProtocolError("bad_protocol", err.message).event())
                continue
            await handle(connection, text)
    except WebSocketDisconnect:
        pass
    finally:
        context.connections.discard(connection)
        await connection.close()
        with contextlib.suppress(Exception):
            await websocket.close()
