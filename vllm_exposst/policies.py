"""READ/WRITE policies (design section 3) behind one small interface.

A policy sees counts only (units read and written, whether the source is complete,
and optionally the model's confidence in its next token) and answers ``"R"`` or
``"W"``.  The loop that applies the answer lives with its user (training layout,
reference decoder, engine sessions); the unit (``word`` or ``token``) says what one
READ or WRITE moves.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .layout import READ, WRITE

Action = Literal["R", "W"]
Unit = Literal["word", "token"]


@dataclass(frozen=True)
class PolicyState:
    """What a policy may look at.

    ``read``/``written`` count units (words, or tokens for token-level policies);
    ``source_done`` means every source unit has been read and no more will come;
    ``confidence`` is the model's probability of its next token, when known.
    """

    read: int
    written: int
    source_done: bool
    confidence: float | None = None


class Policy(ABC):
    """Decides READ or WRITE from the counts so far."""

    unit: Unit = "word"

    @property
    @abstractmethod
    def spec(self) -> str:
        """The canonical string form, accepted back by :func:`parse_policy`."""

    @abstractmethod
    def _decide(self, state: PolicyState) -> Action:
        """Decision while source remains."""

    needs_confidence: bool = False

    def decide(self, state: PolicyState) -> Action:
        """READ or WRITE; once the source is done every decision is WRITE."""
        if state.source_done:
            return WRITE
        return self._decide(state)

    def __repr__(self) -> str:
        return f"Policy({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class WaitK(Policy):
    """Wait-k (Ma et al. 2019): read k units, then alternate one WRITE and one READ."""

    def __init__(self, k: int, unit: Unit = "word") -> None:
        self.k = _positive("k", k)
        self.unit = unit

    @property
    def spec(self) -> str:
        return f"wait-{self.k}" if self.unit == "word" else f"token-wait-{self.k}"

    def _decide(self, state: PolicyState) -> Action:
        return WRITE if state.read - state.written >= self.k else READ


class ReadWrite(Policy):
    """Fixed chunks: read n words, write m words, repeat."""

    def __init__(self, n: int, m: int) -> None:
        self.n, self.m = _positive("n", n), _positive("m", m)

    @property
    def spec(self) -> str:
        return f"read-{self.n}/write-{self.m}"

    def _decide(self, state: PolicyState) -> Action:
        needed = self.n * (state.written // self.m + 1)
        return WRITE if state.read >= needed else READ


class Adaptive(Policy):
    """WRITE while the model's next-token probability is at least ``threshold``.

    Before the first target word the confidence cannot be known without writing
    the assistant header (which must sit right before the first target token), so
    the first WRITE comes after ``min_read`` words.
    """

    needs_confidence = True

    def __init__(self, threshold: float, min_read: int = 1) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"adaptive threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.min_read = _positive("min_read", min_read)

    @property
    def spec(self) -> str:
        base = f"adaptive-{self.threshold:g}"
        return base if self.min_read == 1 else f"{base}-min-{self.min_read}"

    def _decide(self, state: PolicyState) -> Action:
        if state.read < self.min_read:
            return READ
        if state.written == 0:
            return WRITE
        if state.confidence is None:
            raise ValueError("the adaptive policy needs the model's confidence in its next token")
        return WRITE if state.confidence >= self.threshold else READ


class Offline(Policy):
    """Read the whole source, then write: the full-sentence quality ceiling."""

    @property
    def spec(self) -> str:
        return "offline"

    def _decide(self, state: PolicyState) -> Action:
        return READ


_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Policy]]] = [
    (re.compile(r"wait-?k?[-:=]?(\d+)"), lambda k: WaitK(int(k))),
    (re.compile(r"(?:token|tok)-wait-?k?[-:=]?(\d+)"), lambda k: WaitK(int(k), unit="token")),
    (re.compile(r"read-?(\d+)[/-]write-?(\d+)"), lambda n, m: ReadWrite(int(n), int(m))),
    (
        re.compile(r"adaptive[-:]([0-9]*\.?[0-9]+)(?:-min-?(\d+))?"),
        lambda t, n: Adaptive(float(t), int(n) if n else 1),
    ),
    (re.compile(r"offline"), lambda: Offline()),
]

POLICY_FORMS = (
    "wait-K, token-wait-K, read-N/write-M, adaptive-T (0<=T<=1, optionally adaptive-T-min-N), "
    "offline"
)


def parse_policy(spec: str | Policy) -> Policy:
    """Parse ``wait-3``, ``token-wait-2``, ``read-2/write-1``, ``adaptive-0.6`` or ``offline``."""
    if isinstance(spec, Policy):
        return spec
    text = str(spec).strip().lower()
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return build(*match.groups())
    raise ValueError(f"cannot parse policy {spec!r}; expected one of: {POLICY_FORMS}")


def parse_policy_mix(spec: str) -> list[Policy]:
    """A list of policies to sample from: ``wait-k:1-9`` (a range) or comma-separated specs."""
    text = spec.strip().lower()
    ranged = re.fullmatch(r"(token-)?wait-k?[:=](\d+)-(\d+)", text)
    if ranged:
        prefix, low, high = ranged.group(1) or "", int(ranged.group(2)), int(ranged.group(3))
        if low > high:
            raise ValueError(f"empty policy range in {spec!r}")
        return [parse_policy(f"{prefix}wait-{k}") for k in range(low, high + 1)]
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"empty policy mix {spec!r}")
    return [parse_policy(part) for part in parts]
