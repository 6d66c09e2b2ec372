"""``segmentation: auto`` on ``POST /v1/simul/chat/completions``: a text of many sentences.

The user message is cut into sentences by the talk's rules
(:mod:`vllm_exposst.segmentation`, ``max_sentence_words``, and a cut before the
model's limit), and each is translated alone, one after the other, as a WebSocket
talk would translate it.  The reply joins the translations with spaces; its ``simul``
summary counts delays in source words of the whole text and lists every sentence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..engine import SessionConfig, SessionResult, TargetPiece
from ..segmentation import segment
from . import metrics
from .context import ServerContext
from .errors import ApiError
from .talk import POSITION_LIMIT


@dataclass(frozen=True)
class Part:
    """One sentence of the text: its words and why it ended."""

    words: list[str]
    end: str

    @property
    def source(self) -> str:
        return " ".join(self.words)


def sentences(context: ServerContext, config: SessionConfig, text: str) -> list[Part]:
    """The text's sentences, each cut again where its next word could reach the limit."""
    template = context.engine.template(config)
    budget = context.source_token_budget(config)
    parts: list[Part] = []
    for piece in segment(text, config.source_lang, config.max_sentence_words):
        words: list[str] = []
        tokens = 0
        for word in piece.words:
            count = len(template.word_ids(word, len(words)))
            if words and tokens + count > budget:
                parts.append(Part(words, POSITION_LIMIT))
                words, tokens = [], 0
                count = len(template.word_ids(word, 0))
            if count > budget:
                raise ApiError(
                    400,
                    f"the word {word[:40]!r}... alone would reach the position limit",
                    code="context_length_exceeded",
                )
            words.append(word)
            tokens += count
        parts.append(Part(words, piece.end))
    return parts


@dataclass
class Translated:
    """A finished sentence: its result, the tokens the engine computed, when it opened."""

    part: Part
    result: SessionResult
    tokens_computed: int
    opened: float  # seconds after the first sentence opened


async def translate(
    context: ServerContext, config: SessionConfig, parts: list[Part]
) -> AsyncIterator[tuple[int, TargetPiece | Translated]]:
    """``(sentence, piece)`` for each written piece and ``(sentence, Translated)`` at
    each sentence's end, one sentence after the other.  Closing the iterator early
    (the client left) aborts the sentence in progress."""
    engine = context.engine
    first_opened: float | None = None
    for index, part in enumerate(parts):
        session = await engine.open(config)
        metrics.ACTIVE_SESSIONS.inc()
        first_opened = session.opened if first_opened is None else first_opened
        try:
            await session.push(part.source)
            await session.finish()
            async for piece in session:
                yield index, piece
            result = await session.result()
            metrics.observe_result(result)
            tokens = await engine.tokens_computed(result.request_ids)
            yield index, Translated(part, result, tokens, session.opened - first_opened)
        finally:
            metrics.ACTIVE_SESSIONS.dec()
            await session.close()


def summary(done: list[Translated]) -> dict[str, Any]:
    """The ``simul`` object: delays over the whole text's source words, every sentence."""
    delays, elapsed, read = [], [], 0
    for item in done:
        delays += [read + delay for delay in item.result.delays]
        elapsed += [round(1000 * (item.opened + t), 1) for t in item.result.elapsed]
        read += len(item.part.words)
    return {
        "delays": delays,
        "tokens_computed": sum(item.tokens_computed for item in done),
        "tokens_cached": sum(item.result.tokens_cached for item in done),
        "elapsed_ms": elapsed,
        "source_words": read,
        "sentences": [
            {
                "source": item.part.source,
                "text": item.result.text,
                "end": item.part.end,
                "delays": item.result.delays,
                "tokens_computed": item.tokens_computed,
            }
            for item in done
        ],
    }


def joined_text(done: list[Translated]) -> str:
    return " ".join(item.result.text for item in done if item.result.text)
