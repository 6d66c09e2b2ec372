"""What sessions are configured with, what they give back, and how they fail."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..defaults import MAX_WORD_TOKENS
from ..options import TranslationSettings
from ..policies import Policy


class SessionError(RuntimeError):
    """A session failed; the engine and other sessions are unaffected."""


class SessionRejected(SessionError):
    """No room for another session now (sessions or KV blocks): retry later."""


class SessionTimeout(SessionError):
    """The session was idle for longer than the engine's ``idle_timeout``."""


class EngineDead(SessionError):
    """The engine core died: no session can go on until the server is restarted."""


class SessionTooLong(SessionError):
    """The session would pass the model's position limit (``max_model_len``)."""


class UnknownModelError(ValueError):
    """A request names a model or adapter the engine does not serve."""


@dataclass
class SessionConfig(TranslationSettings):
    """How one session translates: the shared settings plus what is per session."""

    lora: str | None = None
    system_prompt: str | None = None
    max_word_tokens: int = MAX_WORD_TOKENS
    max_target_tokens: int | None = None
    # queue a READ chunk behind the running turn when its source has arrived, so the
    # engine runs it in the step after the turn (vllm_exposst/queued_read.py)
    queue_reads: bool = True

    def validate(self) -> Policy:
        policy = super().validate()
        if self.max_word_tokens < 1:
            raise ValueError("max_word_tokens must be >= 1")
        return policy


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
    tokens_cached: int = 0  # of those, prompt tokens vLLM found in its prefix cache
    turns: int = 0  # engine round trips: chunks sent and answered
    # seconds from sending a chunk with new source to its first sampled token
    # (READ-to-WRITE latency), and per generated token after a turn's first
    read_latencies: list[float] = field(default_factory=list)
    decode_steps: list[float] = field(default_factory=list)
    merged_turns: int = 0  # turns whose last output came merged with the next turn's


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
    turns: int  # engine round trips (one per WRITE run between READs, plus peeks)
    read_latencies: list[float]  # chunk with new source -> its first sampled token (s)
    decode_steps: list[float]  # seconds per generated token after each turn's first
    queued_reads: int = 0  # READ chunks the engine ran right behind the turn before
    # prompt tokens of tokens_sent that vLLM's prefix cache held (not computed again)
    tokens_cached: int = 0
