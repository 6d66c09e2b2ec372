"""A READ chunk queued behind the WRITE turn still running, finished by the engine.

When a session's next source word has already arrived (the speaker is ahead, or the
whole sentence is known, as in evaluation), the client would send the next chunk
only after the turn's output has come back, and by then the engine has started the
next step without it: the chunk runs a step later than it could (READ-to-WRITE about
two decode steps).  Instead the decoder queues the chunk right behind the turn
(vLLM keeps queued streaming inputs), and the engine's scheduler completes it the
moment the turn ends, in the same step: what it cannot know in advance depends on
how many target tokens the turn wrote:

* the positions: the allocator, rebuilt from its state when the turn was sent, runs
  the same events the decoder will run (the turn's write, the reads, the refeed copy);
* the refeed copy: the turn's last written token;
* the next turn's token budget: what the turn left of the target length limit, which
  the READ raises (the limit counts the source read).

A queued READ holds only if the turn ends as planned: its lookahead (the token that
begins the next word) is not the stop token.  Otherwise the engine drops it and the
decoder, which sees the same lookahead, goes on as without it.  The decoder queues
only where the turn cannot end for any other reason (token budgets with room for
the longest words, the model length with room for both turns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .layout import allocator_from_state

QUEUED_KEY = "queued_read"  # in the chunk's ``exposst`` extra_args


@dataclass(frozen=True)
class QueuedRead:
    """What the engine needs to complete a queued READ chunk when the turn before ends."""

    stop_id: int  # the turn before ended as planned unless its lookahead is this token
    carried: int  # target tokens the turn before fed itself (the lookahead it carried)
    allocated: int  # target positions allocated for the turn before when it was sent
    reads: list[int]  # tokens per source unit in the chunk, in order
    allocator: dict[str, Any] | None = None  # its state then (None: vLLM's own positions)
    room: int | None = None  # target tokens left before the turn before; None: a fixed budget
    growth: int = 0  # target tokens the READ adds to the length limit (defaults.py)
    word_cap: int | None = None  # the turn after's word budget (words x max tokens); None: tail

    def to_args(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> QueuedRead:
        return cls(**args)

    def holds(self, lookahead: int | None) -> bool:
        """Did the turn before end as planned (a lookahead, and not the stop token)?"""
        return lookahead is not None and lookahead != self.stop_id

    def room_left(self, kept: int) -> int | None:
        """Target tokens left after the turn before kept ``kept`` sampled tokens and the
        READ raised the limit, as the session counts them (None: a fixed budget)."""
        return None if self.room is None else self.room + self.growth - self.carried - kept

    def complete(self, kept: int, last_token: int, start: int) -> Completion:
        """The chunk's remaining parts once the turn before has kept ``kept`` sampled
        tokens (its lookahead dropped); ``last_token`` is the request's last token (the
        turn's last written target token), ``start`` its token count."""
        written = self.carried + kept
        max_tokens = None
        left = self.room_left(kept)
        if left is not None:  # as the session budgets it: what is left, at most the cap
            max_tokens = (left if self.word_cap is None else min(left, self.word_cap)) + 1
        if self.allocator is None:
            return Completion([], None, max_tokens)
        allocator = allocator_from_state(self.allocator)
        allocator.write(written - self.allocated)
        positions = [p for count in self.reads for p in allocator.read(count)]
        extra: list[int] = []
        if allocator.refeed_due:  # the refeed rule, as SessionDecoder._send applies it
            extra.append(last_token)
            positions += allocator.refeed()
        frontier = allocator.frontier  # type: ignore[union-attr]
        return Completion(
            extra, {"start": start, "positions": positions, "decode": frontier}, max_tokens
        )


@dataclass(frozen=True)
class Completion:
    """Tokens to append to the chunk, its position args (``exposst`` extra_args keys
    ``start``, ``positions``, ``decode``; None for vLLM's own positions), and its
    ``max_tokens`` when the turn's budget depended on the turn before (else None)."""

    extra_tokens: list[int]
    positions: dict[str, Any] | None
    max_tokens: int | None
