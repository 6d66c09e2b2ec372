"""The session's side of queued READs (:mod:`vllm_exposst.queued_read`): when a READ
can go behind the running turn, the chunk it sends, where that turn ends in outputs
vLLM merged, and the check that the chunk the loop builds later is the one queued."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..layout import READ, ExposstAllocator, ShiftAllocator
from ..policies import Policy, PolicyState
from ..queued_read import QUEUED_KEY, QueuedRead
from .request import QueuedChunk, Sampled
from .source import SourceBuffer


@dataclass
class ReadPlan:
    """A WRITE turn about to be sent, and the READ after it, decided in advance."""

    words: int  # words the turn writes
    carried: Sampled  # the lookahead it feeds itself (carried from the turn before)
    allocated: int  # target positions allocated for it before it is sent
    read: int  # the first unit the READ after it reads
    reads: int  # ... and the end of them (units ``read .. reads - 1``)
    count: int | None  # words the turn after the READ writes (None: the tail)
    room: int  # target tokens left before the turn
    growth: int = 0  # target tokens the READ adds to the length limit (defaults.py)


@dataclass
class Queued:
    """A queued READ in flight: what was sent, and (once its turn before is back) how
    many sampled tokens that turn kept."""

    plan: ReadPlan
    read: QueuedRead
    chunk: QueuedChunk
    kept: int = 0


def reads_ahead(policy: Policy, source: SourceBuffer, read: int, written: int) -> int | None:
    """The end of the READ the policy makes once ``written`` words are out, if every
    unit it reads has arrived and its "source done" cannot change; None otherwise."""
    if policy.needs_confidence or policy.unit != "word":
        return None
    end = read
    while policy.decide(PolicyState(end, written, source.done(end))) == READ:
        if end >= len(source.units):
            return None  # a unit still to come
        end += 1
    if end == read or (end == len(source.units) and not source.finished):
        return None  # no READ, or one whose "source done" may still change
    return end


def queue_chunk(
    plan: ReadPlan,
    *,
    source: SourceBuffer,
    max_word_tokens: int,
    stop_id: int,
    allocator: ExposstAllocator | ShiftAllocator | None,
    model_room: int,
    max_tokens: int,
) -> Queued | None:
    """The queued READ for ``plan``, or None where a budget could end a turn early:
    target tokens must leave room for the turn's words at ``max_word_tokens`` tokens
    each and one more (the engine sets the next turn's budget from what is left, as the
    session would), and ``model_room`` (tokens the request may still sample after the
    turn's chunk) both turns.  ``allocator``: the session's, as the turn is sent (None:
    vLLM's positions)."""
    units = source.units[plan.read : plan.reads]
    if plan.room - plan.words * max_word_tokens < 1:
        return None
    cap = None if plan.count is None else plan.count * max_word_tokens
    room_after = plan.room + plan.growth  # before the turn's own tokens
    after = min(room_after, room_after if cap is None else cap) + 1  # the most it can be
    copy = int(isinstance(allocator, ExposstAllocator) and allocator.refeed_rule)
    fed = sum(len(unit) for unit in units) + copy
    if max_tokens > model_room or model_room - (max_tokens - 1) - fed < after:
        return None
    read = QueuedRead(
        stop_id=stop_id,
        carried=len(plan.carried),
        allocated=plan.allocated,
        reads=[len(unit) for unit in units],
        allocator=allocator.state() if allocator is not None else None,
        room=plan.room,
        growth=plan.growth,
        word_cap=cap,
    )
    words = {"carried": 0, "max_word_tokens": max_word_tokens}
    if plan.count is not None:
        words["words"] = plan.count
    tokens = [token for unit in units for token in unit]
    return Queued(plan, read, QueuedChunk(tokens, after, {**words, QUEUED_KEY: read.to_args()}))


def turn_length(
    plan: ReadPlan, stop_id: int, split_words: Callable[[Sampled], list[Sampled]]
) -> Callable[[Sampled], int | None]:
    """Where a turn with a READ queued behind it ends within its sampled tokens, once
    that shows (its lookahead: the first token of the word after ``plan.words``, or
    the stop token); None before."""
    lead = plan.carried

    def length(sampled: Sampled) -> int | None:
        tokens = [token for token, _ in sampled]
        ends = [tokens.index(stop_id) + 1] if stop_id in tokens else []
        words = split_words(lead + sampled)
        if len(words) > plan.words:
            ends.append(sum(len(word) for word in words[: plan.words]) + 1 - len(lead))
        return min(ends, default=None)

    return length


def is_queued_chunk(
    queued: Queued, buffer: list[int], extra: dict, max_tokens: int, last_token: int, start: int
) -> bool:
    """Is the chunk the loop built (``buffer``, its ``extra`` args and ``max_tokens``)
    the queued one, as the engine completed it?"""
    done = queued.read.complete(queued.kept, last_token, start)
    expected_max = done.max_tokens if done.max_tokens is not None else queued.chunk.max_tokens
    return (
        buffer == queued.chunk.tokens + done.extra_tokens
        and max_tokens == expected_max
        and extra.get("words") == queued.plan.count
        and (done.positions is None or all(extra[k] == v for k, v in done.positions.items()))
    )
