"""Plugin options from vLLM's own ``--additional-config '{"exposst": {...}}'``.

Validated when the engine and the server start, so a bad value stops ``vllm
serve`` with a clear message instead of failing a session later.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .defaults import (
    ALLOWED_ORIGINS,
    DEFAULT_MODE,
    DEFAULT_POLICY,
    DEFAULT_REFEED,
    DEFAULT_SEGMENTATION,
    DEFAULT_SLOT_LEN,
    LISTEN_HISTORY,
    LISTEN_QUEUE,
    MAX_LISTENERS,
    MAX_QUEUED_INPUT_CHARS,
    MAX_SENTENCE_WORDS,
    MODES,
    SEGMENTATIONS,
    SENTENCE_PAUSE,
    SOURCE_LANG,
    SUBTITLES_KEEP_SECONDS,
    SUBTITLES_MAX_SENTENCES,
    TARGET_LANG,
)
from .origins import parse_allowed_origins
from .policies import Policy, parse_policy


class SettingError(ValueError):
    """A translation setting has a bad value; ``key`` names it."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"{key} {what}")
        self.key, self.what = key, what


@dataclass
class TranslationSettings:
    """How sentences are translated: what a server sets as defaults and a session may override."""

    source_lang: str = SOURCE_LANG
    target_lang: str = TARGET_LANG
    policy: str = DEFAULT_POLICY
    slot_len: int = DEFAULT_SLOT_LEN
    mode: str = DEFAULT_MODE
    refeed: bool = DEFAULT_REFEED  # the refeed rule (exposst mode; docs/design.md)
    # a talk (server/talk.py): who ends sentences, and the server's cuts in "auto"
    segmentation: str = DEFAULT_SEGMENTATION  # "client" (commit) or "auto" (segmentation.py)
    max_sentence_words: int | None = MAX_SENTENCE_WORDS  # None: no cap
    sentence_pause: float | None = SENTENCE_PAUSE  # None: a pause ends nothing

    def validate(self) -> Policy:
        """The parsed policy, or :class:`SettingError` on the first bad value."""
        try:
            policy = parse_policy(self.policy)
        except ValueError as err:
            raise SettingError("policy", str(err)) from None
        if not isinstance(self.slot_len, int) or isinstance(self.slot_len, bool):
            raise SettingError("slot_len", f"must be an integer >= 1, got {self.slot_len!r}")
        if self.slot_len < 1:
            raise SettingError("slot_len", f"must be an integer >= 1, got {self.slot_len!r}")
        if self.mode not in MODES:
            raise SettingError("mode", f"must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.refeed, bool):
            raise SettingError("refeed", f"must be true or false, got {self.refeed!r}")
        self._validate_segmentation()
        return policy

    def _validate_segmentation(self) -> None:
        if self.segmentation not in SEGMENTATIONS:
            raise SettingError(
                "segmentation", f"must be one of {SEGMENTATIONS}, got {self.segmentation!r}"
            )
        words = self.max_sentence_words
        if words is not None and (not isinstance(words, int) or isinstance(words, bool)):
            raise SettingError("max_sentence_words", f"must be an integer >= 1, got {words!r}")
        if words is not None and words < 1:
            raise SettingError("max_sentence_words", f"must be an integer >= 1, got {words!r}")
        pause = self.sentence_pause
        if pause is not None and (
            not isinstance(pause, int | float) or isinstance(pause, bool) or not pause > 0
        ):
            raise SettingError("sentence_pause", f"must be seconds > 0 (or null), got {pause!r}")


@dataclass
class ExposstOptions(TranslationSettings):
    """Server-wide defaults for sessions, and the server's limits."""

    max_sessions: int | None = None  # default: the engine's max_num_seqs
    # realtime connections (speakers) at once; one more gets too_many_speakers and a close
    max_speakers: int | None = None  # default: max_sessions
    session_max_tokens: int = 512  # KV reserved per session at admission
    idle_timeout: float | None = 300.0  # seconds without activity before a session is closed
    listen_history: int = LISTEN_HISTORY  # finished sentences a late listener gets
    listen_queue: int = LISTEN_QUEUE  # events a listener may lag before it is dropped
    max_listeners: int = MAX_LISTENERS  # listeners at once, all sessions (429 past it)
    subtitles_keep: float = SUBTITLES_KEEP_SECONDS  # seconds subtitles outlive a session
    subtitles_max_sentences: int = SUBTITLES_MAX_SENTENCES  # kept per session
    # characters of client frames a WebSocket connection holds before its talk takes them
    input_queue_chars: int = MAX_QUEUED_INPUT_CHARS
    # browser pages (besides the server's own) that may open the WebSockets, or "*"
    allowed_origins: list[str] | str = field(default_factory=lambda: list(ALLOWED_ORIGINS))

    def __post_init__(self) -> None:
        def fail(key: str, what: str) -> None:
            raise ValueError(
                f"--additional-config exposst.{key}: {what}, got {getattr(self, key)!r}"
            )

        try:
            self.validate()
        except SettingError as err:
            raise ValueError(f"--additional-config exposst.{err.key}: {err.what}") from None
        if self.max_sessions is not None and (
            not isinstance(self.max_sessions, int) or self.max_sessions < 1
        ):
            fail("max_sessions", "must be an integer >= 1")
        if self.max_speakers is not None and (
            not isinstance(self.max_speakers, int)
            or isinstance(self.max_speakers, bool)
            or self.max_speakers < 1
        ):
            fail("max_speakers", "must be an integer >= 1 (or null: max_sessions)")
        if not isinstance(self.session_max_tokens, int) or self.session_max_tokens < 1:
            fail("session_max_tokens", "must be an integer >= 1")
        for key in (
            "listen_history",
            "listen_queue",
            "max_listeners",
            "subtitles_max_sentences",
            "input_queue_chars",
        ):
            value = getattr(self, key)
            low = 0 if key == "listen_history" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                fail(key, f"must be an integer >= {low}")
        keep = self.subtitles_keep
        if not isinstance(keep, int | float) or isinstance(keep, bool) or keep < 0:
            fail("subtitles_keep", "must be a number of seconds >= 0")
        if self.idle_timeout is not None and (
            not isinstance(self.idle_timeout, int | float) or self.idle_timeout <= 0
        ):
            fail("idle_timeout", "must be a number of seconds > 0 (or null for none)")
        try:
            parse_allowed_origins(self.allowed_origins)
        except ValueError as err:
            fail("allowed_origins", str(err))

    @classmethod
    def from_additional_config(cls, additional: dict[str, Any] | None) -> ExposstOptions:
        raw = (additional or {}).get("exposst", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError("--additional-config exposst must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"--additional-config exposst: unknown option(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**raw)
