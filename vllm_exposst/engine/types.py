"""What sessions are configured with, what they give back, and how they fail."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..defaults import (
    DEFAULT_MODE,
    DEFAULT_POLICY,
    DEFAULT_REFEED,
    DEFAULT_SLOT_LEN,
    MAX_WORD_TOKENS,
    MODES,
    SOURCE_LANG,
    TARGET_LANG,
)
from ..policies import Policy, parse_policy


class SessionError(RuntimeError):
    """A session failed; the engine and other sessions are unaffected."""


class SessionRejected(SessionError):
    """No room for another session now (sessions or KV blocks): retry later."""


class SessionTimeout(SessionError):
    """The session was idle for longer than the engine's ``idle_timeout``."""


class SessionTooLong(SessionError):
    """The session would pass the model's position limit (``max_model_len``)."""


class UnknownModelError(ValueError):
    """A request names a model or adapter the engine does not serve."""


@dataclass
class SessionConfig:
    """How one session translates."""

    source_lang: str = SOURCE_LANG
    target_lang: str = TARGET_LANG
    policy: str = DEFAULT_POLICY
    slot_len: int = DEFAULT_SLOT_LEN
    mode: str = DEFAULT_MODE
    lora: str | None = None
    system_prompt: str | None = None
    max_word_tokens: int = MAX_WORD_TOKENS
    max_target_tokens: int | None = None
    refeed: bool = DEFAULT_REFEED  # the refeed rule (exposst mode; docs/design.md)

    def validate(self) -> Policy:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.slot_len, int) or self.slot_len < 1:
            raise ValueError(f"slot_len must be an integer >= 1, got {self.slot_len!r}")
        if not isinstance(self.refeed, bool):
            raise ValueError(f"refeed must be true or false, got {self.refeed!r}")
        if self.max_word_tokens < 1:
            raise ValueError("max_word_tokens must be >= 1")
        return parse_policy(self.policy)


@dataclass(frozen=True)
class TargetPiece:
    """One written unit (a word, or a token for token-level policies)."""

    text: str  # text added to the translation (may start with a space)
    token_ids: list[int]
    source_words_read: int
    time: float  # seconds since the session opened
    logprobs: list[float] = field(default_factory=list)


@dataclass
class TurnStats:
    """What a session's engine requests cost, counted by the client as turns complete."""

    request_ids: list[str] = field(default_factory=list)  # several in recompute mode
    tokens_sent: int = 0  # tokens the session asked the engine to compute
    # seconds from sending a chunk to its first sampled token: turns that carry new
    # source (READ-to-WRITE latency) and per generated token of the other turns
    read_latencies: list[float] = field(default_factory=list)
    decode_steps: list[float] = field(default_factory=list)


@dataclass
class SessionResult:
    text: str
    delays: list[int]  # per whitespace word of ``text``
    elapsed: list[float]  # per whitespace word: seconds since the session opened
    target_ids: list[int]
    logprobs: list[float]
    tokens_sent: int  # tokens the session asked the engine to compute (client count)
    source_words: int
    source_tokens_read: int
    tokens_minimum: int  # prefix + header + source read + target: each computed once
    refeeds: int  # copies of the last target token fed by the refeed rule (never shown)
    request_ids: list[str]
    read_latencies: list[float]  # chunk with new source -> its first sampled token (s)
    decode_steps: list[float]  # seconds per generated token in word-continuation turns
