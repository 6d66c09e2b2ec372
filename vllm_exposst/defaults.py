"""Every default and every list of names, once.

Core module: imports nothing.  Training, inference, evaluation, the server and the
CLIs read their defaults here, so a change of default is one line.
"""

from __future__ import annotations

# -- modes: how a session keeps (or rebuilds) its KV cache and assigns positions ----
# ``exposst`` reserved source slots (design 1c), ``shift`` contiguous positions in event
# order (1a), ``recompute`` the offline prompt restored after every READ (1b),
# ``offline`` the whole source first.
MODES: tuple[str, ...] = ("exposst", "shift", "recompute", "offline")
# modes with a training layout (recompute trains as offline)
TRAIN_MODES: tuple[str, ...] = ("exposst", "shift", "offline")
# modes the step-by-step reference decoder runs (offline is recompute with one READ)
DECODE_MODES: tuple[str, ...] = ("exposst", "shift", "recompute")
# modes that keep one KV cache across READ/WRITE turns (an incremental allocator)
CACHE_KEEPING_MODES: tuple[str, ...] = ("exposst", "shift")
OFFLINE = "offline"

DEFAULT_MODE = "exposst"
DEFAULT_POLICY = "wait-3"
DEFAULT_TRAIN_POLICY = "wait-k:1-9"
DEFAULT_SLOT_LEN = 8  # positions reserved per source slot (docs/results.md: slot_len sensitivity)
SOURCE_LANG = "English"
TARGET_LANG = "German"
MAX_WORD_TOKENS = 16
# the refeed rule (layout.ExposstAllocator.refeed_due): after a READ, the next target
# token is predicted from a copy of the last target token (docs/design.md)
DEFAULT_REFEED = True  # tokens of one target word before the word is cut

# -- a talk: live input cut into sentences (segmentation.py, server/talk.py) -----------
SEGMENTATIONS: tuple[str, ...] = ("client", "auto")  # who ends a sentence: commit or server
DEFAULT_SEGMENTATION = "client"
MAX_SENTENCE_WORDS = 60  # auto: a sentence with this many source words is cut there
SENTENCE_PAUSE = 2.0  # auto: seconds without input that end the sentence in progress
TALK_SENTENCES_IN_FLIGHT = 3  # sentences of one connection translating at once
MAX_APPEND_CHARS = 10_000  # characters in one input_text.append (and in a word)
# characters of client frames a WebSocket connection holds before the talk takes them
# (server/inbox.py), JSON included: about three hours of talk sent in 7-character
# appends, more in larger ones; frames past it get input_queue_full
MAX_QUEUED_INPUT_CHARS = 1_000_000


def target_token_limit(source_tokens: int, cap: int | None = None) -> int:
    """Most target tokens for a source: ``cap`` if set, else twice the source + 16.

    Decoders apply it to the source tokens *read so far* (:func:`limit_reached`), which
    the policy decides, not to those that have arrived, which a live speaker decides:
    so a live session and the reference decoder, which knows the whole source, stop
    and read at the same tokens."""
    return cap or 2 * source_tokens + 16


def limit_reached(target_tokens: int, read_tokens: int, source_done: bool, cap: int | None) -> str:
    """What the target length limit makes of the next decision: ``"go"`` (below it),
    ``"read"`` (at it with source left to read: the translation has run ahead of the
    source, so the decoder reads on, which raises an uncapped limit) or ``"stop"``
    (at it with nothing left to read, or at a fixed ``cap``)."""
    if target_tokens < target_token_limit(read_tokens, cap):
        return "go"
    return "stop" if source_done or cap else "read"


# -- listeners and subtitles (server/listeners.py, docs/api.md "Listeners") ----------
LISTEN_HISTORY = 20  # finished sentences a listener gets when it joins mid-talk
LISTEN_QUEUE = 1000  # events a listener may have unsent before it is dropped
MAX_LISTENERS = 1000  # listeners one server follows at once (all sessions); more get 429
SUBTITLES_KEEP_SECONDS = 3600.0  # subtitles stay downloadable this long after the end
SUBTITLES_MAX_SENTENCES = 5000  # finished sentences kept per session (older ones go)
LISTEN_ENDED_SESSIONS = 64  # ended sessions whose subtitles are kept at most
# browser origins, besides the server's own, that may open the WebSocket routes ("*":
# all); a handshake without an Origin header (not a browser) is always let in
ALLOWED_ORIGINS: tuple[str, ...] = ()
