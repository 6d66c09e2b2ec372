"""Prompt pieces around the source and target, from any Hugging Face chat template.

The prompt of a session is ``[prefix][source words][header][target words]<stop>``.
The prefix holds the system prompt (if the template adds one), the opening of the
user turn and the instruction; the header closes the user turn and opens the
assistant turn.  Both are cut out of the template's own rendering around a
sentinel, so every chat model works without per-model code.

Tokenization rule (identical in training, inference and evaluation): text is split
on whitespace; word ``i`` is tokenized on its own as ``word`` when ``i == 0`` and as
``" " + word`` otherwise; prefix and header are tokenized on their own.  A generated
token *starts a new word* when its text begins with whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .defaults import SOURCE_LANG, TARGET_LANG

SENTINEL = "\u2063EXPOSST_SOURCE\u2063"
DEFAULT_INSTRUCTION = "Translate the following {source_lang} text into {target_lang}."
_WORD_START_MARKS = ("Ġ", "▁", "Ċ", " ", "\n", "\t")


def split_words(text: str) -> list[str]:
    """Whitespace-separated words, the unit SimulEval sends and scores."""
    return text.split()


@dataclass(frozen=True)
class PromptTemplate:
    """Token ids of the fixed prompt pieces and the per-word tokenization rule."""

    tokenizer: Any = field(repr=False, compare=False)
    prefix_ids: tuple[int, ...]
    header_ids: tuple[int, ...]
    stop_id: int
    source_lang: str
    target_lang: str

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_ids)

    @property
    def header_len(self) -> int:
        return len(self.header_ids)

    def word_ids(self, word: str, index: int) -> list[int]:
        """Tokens of the ``index``-th word of a source or target text."""
        text = word if index == 0 else " " + word
        return self.tokenizer.encode(text, add_special_tokens=False)

    def words_ids(self, text: str | list[str]) -> list[list[int]]:
        """Tokens of every word of a text, one list per word."""
        words = split_words(text) if isinstance(text, str) else list(text)
        return [self.word_ids(word, i) for i, word in enumerate(words)]

    def offline_prompt(self, source: str | list[str]) -> list[int]:
        """The ordinary full-sentence prompt: prefix, all source words, header."""
        source_ids = [t for word in self.words_ids(source) for t in word]
        return [*self.prefix_ids, *source_ids, *self.header_ids]

    @cached_property
    def word_start(self) -> list[bool]:
        """Per vocabulary id: does this token begin a new word?"""
        return word_start_table(self.tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


UNFINISHED_CHARACTER = "\ufffd"


def finished_text(text: str) -> str:
    """``text`` without the U+FFFD at its end that an unfinished UTF-8 character decodes
    to.  Byte-level tokenizers split ü, ß, emoji and CJK across tokens; a delta cut
    between them would show "\ufffd" to the client for good.  A U+FFFD that the model
    wrote itself is only held back until more text follows it (or the text ends)."""
    return text.rstrip(UNFINISHED_CHARACTER)


def units(words: list[list[int]], unit: str) -> list[list[int]]:
    """Group word tokens into policy units: whole words, or single tokens."""
    if unit == "word":
        return [list(word) for word in words]
    return [[token] for word in words for token in word]


def word_starts(
    tokens: Sequence[int], word_start: Sequence[bool], max_word_tokens: int, carried: int = 0
) -> list[int]:
    """Indices of ``tokens`` (generated target tokens) that begin a new target word.

    A token begins a word when its text starts with whitespace, or when the word
    before it already has ``max_word_tokens`` tokens.  ``tokens[0]`` continues a word
    of ``carried`` tokens fed before it; with ``carried=0`` it begins the first word
    and is not listed.  This is the grouping of WRITE turns: the scheduler stops a
    turn at the ``n``-th start and the engine splits a turn's tokens into the words it
    emits, as the reference decoder ends a word (``reference._write_unit``).
    """
    starts: list[int] = []
    length = carried
    for index, token in enumerate(tokens):
        begins = length >= max_word_tokens or (token < len(word_start) and word_start[token])
        if length and begins:
            starts.append(index)
            length = 1
        else:
            length += 1
    return starts


class WordStarts:
    """:func:`word_starts` of a growing token list, each token looked at once.

    The scheduler asks after every step of a WRITE turn where the turn's words begin;
    rescanning the turn each time costs its length squared, so this keeps the scan's
    state (the current word's length) and the starts found, and :meth:`extend` reads
    only the tokens added since.  ``tokens`` must extend the ones seen before.
    """

    def __init__(self, word_start: Sequence[bool], max_word_tokens: int, carried: int = 0):
        self.word_start = word_start
        self.max_word_tokens = max_word_tokens
        self.starts: list[int] = []
        self.seen = 0
        self._length = carried

    def extend(self, tokens: Sequence[int]) -> list[int]:
        """The starts of ``tokens`` (which begin with the tokens seen so far)."""
        word_start, cap = self.word_start, self.max_word_tokens
        length = self._length
        for index in range(self.seen, len(tokens)):
            token = tokens[index]
            if length and (length >= cap or (token < len(word_start) and word_start[token])):
                self.starts.append(index)
                length = 1
            else:
                length += 1
        self._length, self.seen = length, max(self.seen, len(tokens))
        return self.starts


def word_delays(template: PromptTemplate, groups: list[tuple[list[int], int]]) -> list[int]:
    """Delay of every whitespace word of the decoded text, from per-group delays."""
    delays: list[int] = []
    ids: list[int] = []
    for tokens, delay in groups:
        ids += tokens
        words = len(split_words(template.decode(ids)))
        delays += [delay] * (words - len(delays))
    return delays


def word_start_table(tokenizer: Any) -> list[bool]:
    """Per vocabulary id: does the token's text begin with whitespace (a new word)?"""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [bool(p) and p.startswith(_WORD_START_MARKS) for p in pieces]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _split_at_sentinel(rendered: str) -> tuple[str, str]:
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the chat template does not render the user message verbatim")
    before, after = rendered.split(SENTINEL)
    return before, after


def build_prompt(
    tokenizer: Any,
    source_lang: str = SOURCE_LANG,
    target_lang: str = TARGET_LANG,
    *,
    system_prompt: str | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
) -> PromptTemplate:
    """Cut prefix, header and stop token out of the tokenizer's chat template.

    Tokenizers without a chat template get a plain layout:
    ``"<instruction>\\n<source_lang>:\\n"`` ... ``"\\n<target_lang>:\\n"`` and the
    tokenizer's end-of-sentence token as stop.
    """
    text = instruction.format(source_lang=source_lang, target_lang=target_lang)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        user = {"role": "user", "content": f"{text}\n{SENTINEL}"}
        prefix, header = _split_at_sentinel(_render(tokenizer, [*messages, user], True))
        turn = {"role": "assistant", "content": SENTINEL}
        full = _render(tokenizer, [*messages, {**user, "content": "x"}, turn], False)
        end_of_turn = _split_at_sentinel(full)[1]
        stop_ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
        stop_id = stop_ids[0] if stop_ids else tokenizer.eos_token_id
    else:
        system = f"{system_prompt}\n" if system_prompt else ""
        prefix = f"{system}{text}\n{source_lang}:\n"
        header = f"\n{target_lang}:\n"
        stop_id = tokenizer.eos_token_id
    if stop_id is None:
        raise ValueError("the tokenizer has neither an end-of-turn token nor an eos_token")
    return PromptTemplate(
        tokenizer=tokenizer,
        prefix_ids=tuple(tokenizer.encode(prefix, add_special_tokens=False)),
        header_ids=tuple(tokenizer.encode(header, add_special_tokens=False)),
        stop_id=stop_id,
        source_lang=source_lang,
        target_lang=target_lang,
    )
