"""A talk: one connection's live input cut into sentences, each translated as it comes.

The client sends text; :class:`Talk` cuts it into words (a word counts once whitespace
ends it) and the words into sentences, each an engine session of its own with a
``sentence`` index (0, 1, ... on the connection).  Who ends a sentence is the
``segmentation`` setting: ``client`` (the client's ``input_text.commit``) or ``auto``
(:mod:`vllm_exposst.segmentation`: punctuation, ``max_sentence_words``, and a pause of
``sentence_pause`` seconds with no input); there a sentence whose next word could
reach the model's position limit is cut before that word (``end``:
``position_limit``), and the talk goes on.  A client's sentence is kept whole: one
past the limit fails (an error naming it) and the next words start the next one.
The next sentence starts at once while the previous ones finish (at most
``TALK_SENTENCES_IN_FLIGHT`` per connection; past that, the talk takes no more input
until one is done: back-pressure, not an error; the WebSocket is still read meanwhile,
into the connection's inbox, :mod:`.inbox`).

What a talk keeps does not grow with the sentences it has translated: the sentences
in flight, the splitter's few counters and a partial word (at most
``MAX_APPEND_CHARS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..defaults import MAX_APPEND_CHARS, TALK_SENTENCES_IN_FLIGHT
from ..engine import Session
from ..segmentation import COMMIT, PAUSE, SentenceEnd, SentenceSplitter
from .errors import ApiError

POSITION_LIMIT, CLOSE = "position_limit", "close"  # ends the talk itself gives a sentence


class ClientGone(Exception):
    """The client left while the talk waited; nothing more is sent or opened."""


@dataclass
class Sentence:
    """A sentence of the talk: its session, the source words it was given, how it ended."""

    index: int
    session: Session
    budget: int  # most source tokens before the position limit could be reached
    words: list[str] = field(default_factory=list)
    tokens: int = 0  # source tokens of those words
    end: str | None = None  # why its source ended (punctuation, max_words, pause, commit...)
    # set when the source changed (a word arrived, or the end): the session may write
    # again, and then wait again
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None  # sends its events (server/realtime.py)
    on_word: Callable[[int, str], None] | None = None  # told each word (the listeners)

    @property
    def source(self) -> str:
        return " ".join(self.words)

    def tokens_of(self, word: str) -> int:
        """The word's source tokens as the sentence's next word."""
        return len(self.session.template.word_ids(word, len(self.words)))

    async def push(self, word: str, tokens: int) -> None:
        await self.session.push(word + " ")
        self.words.append(word)
        if self.on_word is not None:
            self.on_word(self.index, word)
        self.tokens += tokens
        self.changed.set()

    async def finish(self, reason: str) -> None:
        self.end = reason
        await self.session.finish()
        self.changed.set()


# opens the engine session of sentence ``index`` and starts sending its events
Opener = Callable[[int], Awaitable[Sentence]]
# reports what went wrong where no client event is waiting for an answer (the pause)
ErrorSink = Callable[[BaseException], Awaitable[None]]


class Talk:
    """The input side of a connection: words in, sentences out, in order."""

    def __init__(
        self, open_sentence: Opener, settings: dict[str, Any], on_error: ErrorSink
    ) -> None:
        self.open_sentence, self.on_error = open_sentence, on_error
        self.current: Sentence | None = None  # the sentence that receives words
        self.in_flight: dict[int, Sentence] = {}  # opened, events not all sent yet
        self.next_index = 0
        self.partial = ""  # text after the last whitespace: a word still arriving
        self.lock = asyncio.Lock()  # one input change at a time (appends, the pause)
        self.room = asyncio.Condition()
        self.gone = False
        self.last_input = time.monotonic()
        self.pause_task: asyncio.Task | None = None
        self.configure(settings)

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply the effective session settings (at once; the splitter keeps its place)."""
        self.segmentation = settings["segmentation"]
        self.auto = self.segmentation == "auto"
        self.pause = settings["sentence_pause"] if self.auto else None
        words = settings["max_sentence_words"] if self.auto else None
        splitter = getattr(self, "splitter", None)
        if splitter is None or splitter.language != settings["source_lang"]:
            self.splitter = SentenceSplitter(settings["source_lang"], words)
        self.splitter.max_words = words

    @property
    def in_progress(self) -> bool:
        """Is a sentence receiving words (or a word arriving)?"""
        return self.current is not None or bool(self.partial)

    # -- input ---------------------------------------------------------------------
    async def append(self, text: str) -> None:
        async with self.lock:
            self.last_input = time.monotonic()
            combined = self.partial + text
            words = combined.split()
            if combined and not combined[-1].isspace() and words:
                self.partial = words.pop()
            else:
                self.partial = ""
            if len(self.partial) > MAX_APPEND_CHARS:
                self.partial = ""
                raise ApiError(
                    400,
                    f"a word of more than {MAX_APPEND_CHARS} characters; it was dropped",
                    code="input_too_large",
                    param="text",
                )
            for word in words:
                await self._word(word)
            # the pause counts from when the talk took the input: time spent waiting for
            # room for the next sentence (back-pressure) is not the speaker's pause
            self.last_input = time.monotonic()
        self._watch_pause()

    async def end_sentence(self, reason: str) -> bool:
        """End the sentence in progress (commit, close): the partial word counts.
        False when there was nothing to end."""
        async with self.lock:
            return await self._flush(reason)

    async def _flush(self, reason: str) -> bool:
        if self.partial:
            word, self.partial = self.partial, ""
            await self._word(word)
        had = self.current is not None
        for item in self.splitter.flush(reason):
            await self._end(item.reason)
        await self._end(reason)  # client mode: the splitter never saw the words
        return had

    async def _word(self, word: str) -> None:
        items = self.splitter.push(word) if self.auto else [word]
        for item in items:
            if isinstance(item, SentenceEnd):
                await self._end(item.reason)
            else:
                await self._add(item)

    async def _add(self, word: str) -> None:
        if self.current is not None and self.current.session.ended:
            self.current = None  # it ended before its source did (target length)
        if self.current is None:
            self.current = await self._open()
        tokens = self.current.tokens_of(word)
        if self.auto and self.current.tokens + tokens > self.current.budget:
            # the server's sentences stay under the limit; a client's sentence is kept
            # whole (one past the limit fails with context_length_exceeded by itself)
            if self.current.words:
                await self._end(POSITION_LIMIT)
                self.splitter.restart_with_last_word()
                self.current = await self._open()
                tokens = self.current.tokens_of(word)
            if tokens > self.current.budget:
                raise ApiError(
                    400,
                    f"the word {word[:40]!r}... alone would reach the position limit; "
                    "it was dropped",
                    code="context_length_exceeded",
                    param="text",
                )
        await self.current.push(word, tokens)

    async def _end(self, reason: str) -> None:
        sentence, self.current = self.current, None
        if sentence is not None:
            await sentence.finish(reason)

    async def _open(self) -> Sentence:
        """The next sentence, once fewer than the limit are in flight."""
        async with self.room:
            await self.room.wait_for(
                lambda: self.gone or len(self.in_flight) < TALK_SENTENCES_IN_FLIGHT
            )
        if self.gone:
            raise ClientGone()
        index = self.next_index
        sentence = await self.open_sentence(index)
        self.next_index += 1
        self.in_flight[index] = sentence
        return sentence

    async def sent(self, sentence: Sentence) -> None:
        """All events of the sentence are out (or it failed): make room for the next."""
        async with self.room:
            self.in_flight.pop(sentence.index, None)
            self.room.notify_all()

    # -- the pause ------------------------------------------------------------------
    def _watch_pause(self) -> None:
        if self.pause and self.in_progress and (self.pause_task is None or self.pause_task.done()):
            self.pause_task = asyncio.ensure_future(self._pause_watch())

    async def _pause_watch(self) -> None:
        """End the sentence in progress once no input came for ``sentence_pause`` s."""
        while self.pause and not self.gone:
            wait = self.last_input + self.pause - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self.lock:
                if time.monotonic() - self.last_input >= self.pause:
                    try:
                        await self._flush(PAUSE)
                    except ClientGone:
                        pass
                    except Exception as exc:  # e.g. no room for the partial word's sentence
                        with contextlib.suppress(Exception):
                            await self.on_error(exc)
                    return

    # -- the end ----------------------------------------------------------------------
    async def finish(self) -> None:
        """``session.close``: end the sentence in progress, wait for every sentence."""
        await self.end_sentence(CLOSE)
        async with self.room:
            await self.room.wait_for(lambda: not self.in_flight)

    async def close(self) -> None:
        """The connection is over: stop the pause watch, abort what is in flight."""
        self.gone = True
        async with self.room:
            self.room.notify_all()
        if self.pause_task is not None and not self.pause_task.done():
            self.pause_task.cancel()
            with contextlib.suppress(BaseException):
                await self.pause_task
        for sentence in list(self.in_flight.values()):
            with contextlib.suppress(Exception):  # a dead engine may refuse the abort
                await sentence.session.abort()
            if sentence.task is not None and not sentence.task.done():
                sentence.task.cancel()
                with contextlib.suppress(BaseException):
                    await sentence.task
        self.current = None


__all__ = ["CLOSE", "COMMIT", "POSITION_LIMIT", "ClientGone", "Sentence", "Talk"]
