"""The position allocator of design section 2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_exposst.layout import (
    ExposstAllocator,
    PositionLimitError,
    ShiftAllocator,
    allocate,
    allocate_mode,
    allocate_offline,
    allocate_shift,
)

WORKED = [("R", 2), ("W", 1), ("R", 1), ("W", 1), ("R", 1), ("W", 1)]


def test_worked_example_of_design_section_2():
    positions = allocate(WORKED, prefix_len=3, header_len=1, slot_len=3)
    assert positions == [0, 1, 2, 3, 4, 6, 7, 5, 8, 9, 12]


def test_worked_example_of_the_refeed_rule():
    """docs/design.md: t1' and t2' are copies at t1's and t2's own positions."""
    events = [("R", 2), ("W", 1), ("R", 1), ("F", 1), ("W", 1), ("R", 1), ("F", 1), ("W", 1)]
    positions = allocate(events, prefix_len=3, header_len=1, slot_len=3)
    assert positions == [0, 1, 2, 3, 4, 6, 7, 5, 7, 8, 9, 8, 12]


def test_the_refeed_rule_is_due_once_after_reads_that_follow_target_tokens():
    on = ExposstAllocator(3, 1, slot_len=3, refeed_rule=True)
    off = ExposstAllocator(3, 1, slot_len=3)
    for allocator in (on, off):
        allocator.read(2)
        assert not allocator.refeed_due  # nothing written yet
        allocator.write(1)  # header + t1 at 6, 7
        assert not allocator.refeed_due  # no READ since
        allocator.read(1)
    assert on.refeed_due and not off.refeed_due
    assert on.refeed() == [7] and not on.refeed_due
    assert on.write(1) == [8]
    on.read(1)
    on.read(1)  # two READs, one copy
    assert on.refeed() == [8] and not on.refeed_due
    with pytest.raises(ValueError, match="refeed"):
        ShiftAllocator(3, 1).refeed()
    with pytest.raises(ValueError, match="one token"):
        allocate([("R", 1), ("W", 1), ("R", 1), ("F", 2)], prefix_len=3, header_len=1, slot_len=3)


def test_first_read_longer_than_a_slot_takes_further_slots_before_the_header():
    # wait-5 with L = 3: s1..s3 in [P, P+3), s4, s5 in [P+3, P+6), header at P+6.
    positions = allocate([("R", 5), ("W", 2)], prefix_len=3, header_len=1, slot_len=3)
    assert positions == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11]


def test_shift_is_contiguous_in_event_order():
    assert allocate_shift(WORKED, prefix_len=3, header_len=1) == list(range(11))


def test_offline_is_the_ordinary_prompt():
    # offline physical order: prefix, 4 source, header, 3 target.
    assert allocate_offline(WORKED, prefix_len=3, header_len=1) == list(range(11))
    assert allocate_mode("offline", WORKED, prefix_len=3, header_len=1) == list(range(11))


def test_header_is_written_once_and_only_with_a_target_token():
    alloc = ExposstAllocator(2, 3, slot_len=2)
    assert alloc.write(0) == []
    assert alloc.read(1) == [2]
    assert alloc.write(1) == [4, 5, 6, 7]  # 3 header positions, then the target token
    assert alloc.write(2) == [8, 9]


@pytest.mark.parametrize(
    "events, kwargs, message",
    [
        ([("R", -1)], {}, "count"),
        ([("X", 1)], {}, "unknown event kind"),
        ([("R",)], {}, "pair"),
        ([("R", 1.5)], {}, "integer"),
        ([("R", 1)], {"slot_len": 0}, "slot_len"),
        ([("R", 1)], {"prefix_len": -2}, "prefix_len"),
        ([("R", 1)], {"header_len": -1}, "header_len"),
    ],
)
def test_invalid_input_raises_value_error(events, kwargs, message):
    args = {"prefix_len": 3, "header_len": 1, "slot_len": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        allocate(events, **args)


def test_passing_the_maximum_position_raises_the_dedicated_error():
    assert allocate([("R", 1), ("W", 2)], prefix_len=3, header_len=1, slot_len=3, max_position=9)
    with pytest.raises(PositionLimitError, match="below 9"):
        allocate([("R", 1), ("W", 3)], prefix_len=3, header_len=1, slot_len=3, max_position=9)
    with pytest.raises(PositionLimitError):
        allocate_shift([("R", 9)], prefix_len=3, header_len=1, max_position=9)


def test_a_failed_event_leaves_the_allocator_unchanged():
    alloc = ExposstAllocator(3, 1, max_position=10, slot_len=3)
    alloc.read(2)
    before = (alloc.frontier, alloc.slot_next, alloc.slot_end, alloc.header_written)
    with pytest.raises(PositionLimitError):
        alloc.write(6)
    assert (alloc.frontier, alloc.slot_next, alloc.slot_end, alloc.header_written) == before
    assert alloc.write(2) == [6, 7, 8]


events_strategy = st.lists(
    st.tuples(st.sampled_from(["R", "W"]), st.integers(min_value=0, max_value=7)), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(
    events=events_strategy,
    prefix_len=st.integers(0, 6),
    header_len=st.integers(0, 4),
    slot_len=st.integers(1, 9),
)
def test_allocator_properties(events, prefix_len, header_len, slot_len):
    alloc = ExposstAllocator(prefix_len, header_len, slot_len=slot_len)
    history: list[int] = alloc.prefix()
    assert history == list(range(prefix_len))
    last_write = prefix_len - 1
    for kind, n in events:
        frozen = list(history)
        slot_before = (alloc.slot_next, alloc.slot_end)
        new = alloc.apply((kind, n))
        if kind == "R":
            # source tokens lie inside a slot: the current one, or one opened at the frontier
            for p in new:
                slot_start = alloc.slot_end - slot_len
                assert slot_before[0] <= p < slot_before[1] or p >= slot_before[1]
                assert p < alloc.frontier
            if new:
                assert slot_start <= new[-1] < alloc.slot_end
        else:
            # template and target positions increase
            for p in new:
                assert p > last_write
                last_write = p
        history += new
        # positions are distinct; earlier positions never change; all below the frontier
        assert len(set(history)) == len(history)
        assert history[: len(frozen)] == frozen
        assert all(p < alloc.frontier for p in history)
    assert history == allocate(
        events, prefix_len=prefix_len, header_len=header_len, slot_len=slot_len
    )


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, slot_len=st.integers(1, 9))
def test_every_source_token_sits_in_a_slot_of_slot_len_positions(events, slot_len):
    """Read one token at a time: each lands in the slot current after it, slots are disjoint
    runs of slot_len positions, and no template or target token ever takes a slot position."""
    alloc = ExposstAllocator(2, 1, slot_len=slot_len)
    slots: set[tuple[int, int]] = set()
    source, other = [], []
    for kind, n in events:
        for _ in range(n):
            if kind == "R":
                (p,) = alloc.read(1)
                slot = (alloc.slot_end - slot_len, alloc.slot_end)
                assert slot[0] <= p < slot[1]
                slots.add(slot)
                source.append(p)
            else:
                other += alloc.write(1)
    ordered = sorted(slots)
    assert all(b <= c for (_, b), (c, _) in zip(ordered, ordered[1:]))
    assert not any(a <= p < b for p in other for a, b in slots)
    # splitting reads into single tokens changes nothing
    singles = [(k, 1) for k, n in events for _ in range(n)]
    assert allocate(singles, prefix_len=2, header_len=1, slot_len=slot_len) == allocate(
        events, prefix_len=2, header_len=1, slot_len=slot_len
    )


def test_shift_allocator_matches_positions_in_order():
    alloc = ShiftAllocator(2, 1)
    assert alloc.read(2) == [2, 3]
    assert alloc.write(1) == [4, 5]
    assert alloc.read(1) == [6]
