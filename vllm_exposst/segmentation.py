"""Sentence ends in a stream of words: where a talk's live input is cut into sentences.

Core module: pure text in, sentence boundaries out (the WebSocket talk, the chat route
and any offline tool use the same rules).  A :class:`SentenceSplitter` takes complete
words one at a time and answers with the words and the sentence ends in stream order;
it looks at most one word ahead, and only where a word alone cannot say
("etc." ends a sentence before "We", not before "and").

Rules (English, German; other languages get both lists):

* ``.``, ``?``, ``!`` (also ``?!``, ``…``) end a sentence, also inside closing quotes
  and brackets (``"Stop."``, ``„Halt.“``, ``(mostly.)``);
* an ellipsis, and a stop inside closing quotes or brackets, end it only before a word
  that starts upper-case (``Wait... what`` goes on, ``"Sure?" she asked`` too);
* titles (``Dr.``, ``Mr.``, ``Prof.``), initials and initialisms (``J.``, ``U.S.``,
  ``z.B.``, ``e.g.``, ``p.m.``) and known mid-sentence abbreviations (``ca.``, ``bzw.``,
  ``vgl.``) never end one; ``etc.``, ``usw.`` and ``No.`` end one before an upper-case word;
* a number with a decimal point (``3.5``) is one word and ends nothing; in German a
  number of up to three digits with a period is an ordinal (``am 3. Oktober``);
* a sentence also ends after ``max_words`` words (cut at the word) and wherever the
  caller says (:meth:`SentenceSplitter.flush`: a pause, a commit, the end of the text).

Why our own rules and not pysbd or sentencex (both tried on these cases): neither
segments a word stream, both segment a finished text and call its last word an end,
so a live caller has to hold a word back and re-run them on the whole sentence for
every word (pysbd: 1.4 s for 400 words that way); both miss a stop inside closing
brackets (``(mostly.) The``), sentencex misses ``…`` before an upper-case word and
pysbd ``»Halt.« Dann``; and both choose rules by language code, while our settings
name languages.  Missing an end costs less than a false one (the word cap bounds a
long sentence; a false end cuts a clause in two), so unclear cases do not end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# why a sentence ended (the ``end`` of a sentence's done event)
PUNCTUATION, MAX_WORDS, PAUSE, COMMIT = "punctuation", "max_words", "pause", "commit"

CLOSERS = "\"'”’“‘»«›‹)]}"
OPENERS = "\"'“‘„‚«»‹›([{¿¡"
TERMINALS = ".?!…"

# abbreviations (lower case, without the final period) that never end a sentence
TITLES_EN = {"dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "gen", "col", "lt", "sgt", "rev"}
TITLES_DE = {"dr", "prof", "hr", "fr", "hrn", "nr", "str", "st"}
MIDDLE_EN = {"vs", "approx", "ca", "cf", "fig", "vol", "ch", "pp", "dept", "est", "inc", "ltd"}
MIDDLE_DE = {
    "ca", "bzw", "vgl", "ggf", "evtl", "inkl", "zzgl", "bspw", "sog", "bzgl", "geb", "abs",
    "abb", "bd", "jh", "jhd", "mio", "mrd", "tel", "ebd", "ff",
}  # fmt: skip
# abbreviations that end a sentence before an upper-case word (and only there)
OPEN_END_EN = {"etc", "no", "co", "corp"}
OPEN_END_DE = {"usw", "usf", "etc"}

LANGUAGES = {
    "english": "en",
    "en": "en",
    "german": "de",
    "deutsch": "de",
    "de": "de",
}


def language_code(language: str) -> str | None:
    """``en``, ``de``, or None (unknown: both languages' abbreviations apply)."""
    return LANGUAGES.get(language.strip().lower())


@dataclass(frozen=True)
class SentenceEnd:
    """The sentence so far is complete; ``reason`` says why (punctuation, max_words, ...)."""

    reason: str


# what a word says about the sentence end after it
END, GO_ON, ASK_NEXT = "end", "go on", "ask the next word"


class Rules:
    """One language's view of a word: does it end the sentence?"""

    def __init__(self, language: str) -> None:
        code = language_code(language)
        self.ordinals = code in ("de", None)  # "am 3. Oktober"
        self.never: set[str] = set()
        self.open_end: set[str] = set()
        if code in ("en", None):
            self.never |= TITLES_EN | MIDDLE_EN
            self.open_end |= OPEN_END_EN
        if code in ("de", None):
            self.never |= TITLES_DE | MIDDLE_DE
            self.open_end |= OPEN_END_DE

    def judge(self, word: str) -> str:
        """END, GO_ON, or ASK_NEXT (it depends on the next word)."""
        core = word.rstrip(CLOSERS)
        closed = len(core) < len(word)  # a stop inside quotes or brackets
        if not core or core[-1] not in TERMINALS:
            return GO_ON
        if core.endswith(("...", "…")):
            return ASK_NEXT  # "Wait... what" goes on, "Wait... Then" ends
        if core[-1] in "?!":
            return ASK_NEXT if closed else END
        stem = core[:-1].lstrip(OPENERS)
        lower = stem.lower()
        if not stem:
            return END  # a lone "."
        if lower in self.never or _initials(stem):
            return GO_ON
        if lower in self.open_end:
            return ASK_NEXT
        if stem.isdigit() and self.ordinals and len(stem) <= 3:
            return GO_ON
        if stem.isalpha() and len(stem) == 1:
            return GO_ON  # an initial: "J. Smith", "z. B."
        return ASK_NEXT if closed else END


def _initials(stem: str) -> bool:
    """``U.S``, ``z.B``, ``e.g``, ``p.m``: single letters joined by periods."""
    parts = stem.split(".")
    return len(parts) > 1 and all(len(part) == 1 and part.isalpha() for part in parts)


def starts_upper(word: str) -> bool:
    """Does the word (after any opening quotes or brackets) start with a capital?"""
    core = word.lstrip(OPENERS)
    return bool(core) and core[0].isupper()


class SentenceSplitter:
    """Complete words in, words and sentence ends out, in stream order.

    ``push(word)`` returns what follows from that word: possibly the end of the
    sentence before it (when the previous word needed this one to decide), the word,
    and possibly the end after it.  ``flush(reason)`` ends the sentence in progress
    (a pause, a commit, the end of the text).  ``max_words`` may change between words.
    """

    def __init__(self, language: str = "English", max_words: int | None = None) -> None:
        self.language, self.rules = language, Rules(language)
        self.max_words = max_words
        self.words = 0  # words in the sentence in progress
        self.undecided = False  # the last word ends the sentence if the next is upper-case

    def push(self, word: str) -> list[str | SentenceEnd]:
        if not word or any(char.isspace() for char in word):
            raise ValueError(f"a word is non-empty and has no whitespace, got {word!r}")
        out: list[str | SentenceEnd] = []
        if self.undecided:
            self.undecided = False
            if starts_upper(word):
                out.append(self._end(PUNCTUATION))
        out.append(word)
        self.words += 1
        verdict = self.rules.judge(word)
        if verdict == END:
            out.append(self._end(PUNCTUATION))
        elif self.max_words is not None and self.words >= self.max_words:
            out.append(self._end(MAX_WORDS))
        elif verdict == ASK_NEXT:
            self.undecided = True
        return out

    def restart_with_last_word(self) -> None:
        """The caller cut the sentence before the word just pushed (at the position
        limit): that word, if its sentence is still open, is now the first of one."""
        self.words = min(self.words, 1)

    def flush(self, reason: str) -> list[SentenceEnd]:
        """End the sentence in progress, if any (an undecided stop counts as punctuation)."""
        if not self.words:
            return []
        return [self._end(PUNCTUATION if self.undecided else reason)]

    def _end(self, reason: str) -> SentenceEnd:
        self.words, self.undecided = 0, False
        return SentenceEnd(reason)


@dataclass(frozen=True)
class Segment:
    """A finished sentence of a text: its words and why it ended."""

    words: list[str]
    end: str

    @property
    def text(self) -> str:
        return " ".join(self.words)


def segment(
    text: str | Iterable[str], language: str = "English", max_words: int | None = None
) -> list[Segment]:
    """A whole text (or its words) cut into sentences; the last one ends with ``commit``."""
    words = text.split() if isinstance(text, str) else list(text)
    splitter = SentenceSplitter(language, max_words)
    segments: list[Segment] = []
    current: list[str] = []
    for item in [out for word in words for out in splitter.push(word)] + splitter.flush(COMMIT):
        if isinstance(item, SentenceEnd):
            segments.append(Segment(current, item.reason))
            current = []
        else:
            current.append(item)
    return segments
