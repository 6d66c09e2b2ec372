"""A session's source as it arrives: words cut into policy units, and waiting for more."""

from __future__ import annotations

import asyncio

from ..prompts import PromptTemplate, split_words, units
from .types import SessionError


class SourceBuffer:
    """Source words pushed so far, as the units the policy reads (words or tokens).

    ``idle`` is set while the decoder waits for a unit that has not arrived (every
    piece written so far is queued by then); the session also sets it when it ends.
    """

    def __init__(self, template: PromptTemplate, unit: str) -> None:
        self.template, self.unit = template, unit
        self.units: list[list[int]] = []
        self.unit_word: list[int] = []  # per unit: index of the word it belongs to
        self.words = 0
        self.finished = False
        self.partial = ""  # text after the last whitespace: a word still arriving
        self.arrived = asyncio.Event()
        self.idle = asyncio.Event()

    def push(self, text: str) -> None:
        """Add text; a word counts once whitespace (or :meth:`finish`) ends it."""
        if self.finished:
            raise SessionError("source already finished")
        combined = self.partial + text
        words = split_words(combined)
        if combined and not combined[-1].isspace() and words:
            self.partial = words.pop()
        else:
            self.partial = ""
        self._add_words(words)

    def finish(self) -> None:
        """The source is complete."""
        if self.partial:
            self._add_words([self.partial])
            self.partial = ""
        self.finished = True
        self.arrived.set()

    def _add_words(self, words: list[str]) -> None:
        for word in words:
            ids = self.template.word_ids(word, self.words)
            for unit in units([ids], self.unit):
                self.units.append(unit)
                self.unit_word.append(self.words)
            self.words += 1
        if words:
            self.arrived.set()

    def done(self, read: int) -> bool:
        """Has the decoder read everything there will ever be?"""
        return self.finished and read == len(self.units)

    def tokens(self) -> int:
        return sum(len(unit) for unit in self.units)

    async def wait_for(self, read: int) -> None:
        """Until unit ``read`` has arrived or the source is finished."""
        while read >= len(self.units) and not self.finished:
            self.arrived.clear()
            self.idle.set()
            await self.arrived.wait()
