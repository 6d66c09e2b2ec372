"""A queued READ's completion (vllm_exposst/queued_read.py): the positions the engine's
scheduler computes from an allocator state sent across processes equal the positions
of the whole event sequence allocated in one go (``layout.allocate``)."""

from __future__ import annotations

import json
import random

import pytest

from vllm_exposst.layout import (
    READ,
    REFEED,
    WRITE,
    allocate,
    allocator_from_state,
    make_allocator,
)
from vllm_exposst.queued_read import QueuedRead

PREFIX, HEADER = 5, 2


def random_events(rng: random.Random, count: int) -> list[tuple[str, int]]:
    events = [(READ, rng.randint(1, 3))]
    for _ in range(count):
        events.append((rng.choice([READ, WRITE]), rng.randint(1, 4)))
    return events


@pytest.mark.parametrize("mode", ["exposst", "shift"])
@pytest.mark.parametrize("seed", range(20))
def test_an_allocator_rebuilt_from_its_state_goes_on_identically(mode, seed):
    rng = random.Random(seed)
    events = random_events(rng, 12)
    cut = rng.randint(1, len(events) - 1)
    options = dict(prefix_len=PREFIX, header_len=HEADER, slot_len=rng.randint(1, 6))
    original = make_allocator(mode, **options, refeed=True)
    for event in events[:cut]:
        original.apply(event)
    rebuilt = allocator_from_state(json.loads(json.dumps(original.state())))  # plain values
    for event in events[cut:]:
        assert rebuilt.apply(event) == original.apply(event)
        assert rebuilt.refeed_due == original.refeed_due


@pytest.mark.parametrize("seed", range(30))
def test_a_completed_queued_read_has_the_positions_of_the_whole_sequence(seed):
    """The turn before writes ``carried + kept`` target tokens (``allocated`` of them
    allocated before it was sent); the chunk reads units and, under the refeed rule,
    feeds a copy of the last target token; the next token is decoded at the frontier."""
    rng = random.Random(seed)
    slot_len = rng.randint(1, 6)
    before = random_events(rng, rng.randint(0, 6))
    if all(kind == READ for kind, _ in before):
        before.append((WRITE, 1))
    carried = int(rng.random() < 0.5)
    allocated = carried  # the carried lookahead's position is allocated before sending
    kept = rng.randint(0, 5) + (1 - carried)  # the turn writes at least one token
    reads = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]

    allocator = make_allocator(
        "exposst", prefix_len=PREFIX, header_len=HEADER, slot_len=slot_len, refeed=True
    )
    for event in before:
        allocator.apply(event)
    if allocator.refeed_due:
        allocator.refeed()
    allocator.write(allocated)
    queued = QueuedRead(
        stop_id=0, carried=carried, allocated=allocated, reads=reads, allocator=allocator.state()
    )
    done = queued.complete(kept, last_token=99, start=123)

    written = carried + kept
    whole = [*before]
    if any(kind == WRITE for kind, _ in before[:-1]) and before[-1][0] == READ:
        whole.append((REFEED, 1))  # the turn before followed a READ: its own copy
    whole += [(WRITE, written), *[(READ, n) for n in reads], (REFEED, 1)]
    expected = allocate(whole, prefix_len=PREFIX, header_len=HEADER, slot_len=slot_len)
    assert done.extra_tokens == [99]
    assert done.positions["positions"] == expected[-(sum(reads) + 1) :]
    assert done.positions["start"] == 123
    then = allocate([*whole, (WRITE, 1)], prefix_len=PREFIX, header_len=HEADER, slot_len=slot_len)
    assert done.positions["decode"] == then[-1]
    assert done.max_tokens is None


def test_the_tail_budget_is_what_the_turn_before_left():
    queued = QueuedRead(stop_id=0, carried=1, allocated=1, reads=[2], room=20)
    done = queued.complete(kept=6, last_token=5, start=40)  # 7 target tokens written
    assert done.max_tokens == 20 - 7 + 1
    assert done.positions is None and done.extra_tokens == []  # vLLM's own positions


def test_a_word_turn_budget_is_its_words_cap_or_what_is_left():
    """As SessionDecoder budgets a turn of words: min(tokens left, words x max) + 1."""
    queued = QueuedRead(stop_id=0, carried=1, allocated=1, reads=[2], room=40, word_cap=16)
    assert queued.complete(kept=6, last_token=5, start=40).max_tokens == 16 + 1
    late = QueuedRead(stop_id=0, carried=1, allocated=1, reads=[2], room=20, word_cap=16)
    assert late.complete(kept=6, last_token=5, start=40).max_tokens == 20 - 7 + 1


def test_a_queued_read_holds_only_after_a_lookahead_that_is_not_the_stop_token():
    queued = QueuedRead(stop_id=7, carried=0, allocated=0, reads=[1])
    assert queued.holds(8)
    assert not queued.holds(7)
    assert not queued.holds(None)
