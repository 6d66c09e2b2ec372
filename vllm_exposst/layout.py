"""Position allocation: the one place where READ/WRITE events become position ids.

ExPosST (design section 2) reserves a slot of ``slot_len`` positions for source
tokens that have not arrived yet, so that a token's position never changes once it
is in the KV cache.  The same allocator objects serve the engine (one event at a
time), the training layout and the reference decoder; :func:`allocate` is a thin
wrapper for whole event sequences.

Two baselines share the interface: :class:`ShiftAllocator` (contiguous positions in
event order, design 1a) and the offline prompt (:func:`allocate_offline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .defaults import DEFAULT_SLOT_LEN, OFFLINE

READ: Literal["R"] = "R"
WRITE: Literal["W"] = "W"
REFEED: Literal["F"] = "F"  # the last target token fed again (the refeed rule, below)
Event = tuple[str, int]


class PositionLimitError(ValueError):
    """A token would get a position at or past the model's maximum position."""


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_event(event: Event) -> tuple[str, int]:
    """Validate one ``(kind, n)`` event and return it normalised."""
    try:
        kind, count = event
    except (TypeError, ValueError):
        raise ValueError(f"an event is a pair (kind, count), got {event!r}") from None
    if kind not in (READ, WRITE, REFEED):
        raise ValueError(
            f"unknown event kind {kind!r}: expected 'R' (read), 'W' (write) or 'F' (refeed)"
        )
    _check_count(f"count of event {event!r}", count)
    if kind == REFEED and count != 1:
        raise ValueError(f"a refeed event feeds one token, got {event!r}")
    return kind, count


@dataclass
class _AllocatorBase:
    prefix_len: int
    header_len: int
    max_position: int | None = None
    header_written: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_count("prefix_len", self.prefix_len)
        _check_count("header_len", self.header_len)
        if self.max_position is not None:
            _check_count("max_position", self.max_position, minimum=1)
        self._check_limit(list(range(self.prefix_len)))

    def prefix(self) -> list[int]:
        """Positions of the prefix tokens (system prompt, user header, instruction)."""
        return list(range(self.prefix_len))

    def _check_limit(self, positions: Sequence[int]) -> None:
        if self.max_position is not None and positions and max(positions) >= self.max_position:
            raise PositionLimitError(
                f"position {max(positions)} would pass the model's limit: positions must stay "
                f"below {self.max_position} (max_model_len); the session is too long"
            )

    def apply(self, event: Event) -> list[int]:
        """Allocate one ``(kind, n)`` event."""
        kind, count = check_event(event)
        if kind == REFEED:
            return self.refeed()
        return self.read(count) if kind == READ else self.write(count)

    @property
    def refeed_due(self) -> bool:
        """Must the last target token be fed again before the model predicts the next one?"""
        return False

    def refeed(self) -> list[int]:
        raise ValueError(f"{type(self).__name__} has no refeed rule")

    def state(self) -> dict[str, Any]:
        """Every field as plain values, so another process (the engine's scheduler) can
        rebuild this allocator with :func:`allocator_from_state` and go on from here."""
        return {
            "kind": type(self).__name__,
            **{f.name: getattr(self, f.name) for f in fields(self)},
        }


@dataclass
class ExposstAllocator(_AllocatorBase):
    """Design section 2: source tokens fill reserved slots; template/target take the frontier.

    State is ``frontier`` (next free template/target position) and the current
    source slot ``[slot_next, slot_end)``.  Every call validates first and commits
    only if all its positions fit, so a failed call leaves the session unchanged.
    """

    slot_len: int = DEFAULT_SLOT_LEN
    refeed_rule: bool = False  # see :attr:`refeed_due`
    frontier: int = field(default=0, init=False)
    slot_next: int = field(default=0, init=False)
    slot_end: int = field(default=0, init=False)
    last_target: int | None = field(default=None, init=False)  # position of the last one
    read_since_write: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_count("slot_len", self.slot_len, minimum=1)
        self.slot_next = self.prefix_len
        self.slot_end = self.prefix_len + self.slot_len
        self.frontier = self.slot_end

    def read(self, n: int) -> list[int]:
        _check_count("read count", n)
        slot_next, slot_end, frontier = self.slot_next, self.slot_end, self.frontier
        positions = []
        for _ in range(n):
            if slot_next >= slot_end:
                slot_next, slot_end = frontier, frontier + self.slot_len
                frontier = slot_end
            positions.append(slot_next)
            slot_next += 1
        self._check_limit(positions)
        self.slot_next, self.slot_end, self.frontier = slot_next, slot_end, frontier
        self.read_since_write = self.read_since_write or (n > 0 and self.last_target is not None)
        return positions

    def write(self, n: int) -> list[int]:
        _check_count("write count", n)
        with_header = n > 0 and not self.header_written
        count = n + (self.header_len if with_header else 0)
        positions = list(range(self.frontier, self.frontier + count))
        self._check_limit(positions)
        self.frontier += count
        self.header_written = self.header_written or with_header
        if n > 0:
            self.last_target, self.read_since_write = positions[-1], False
        return positions

    @property
    def refeed_due(self) -> bool:
        """The refeed rule: after a READ that follows target tokens, the last target token
        is fed again, at its own position, before the model predicts the next target
        token (or the stop token), which is then predicted from that copy instead of
        from the source token just read (docs/design.md: the refeed rule)."""
        return self.refeed_rule and self.read_since_write

    def refeed(self) -> list[int]:
        """The position of the copy: the last target token's own position."""
        if self.last_target is None:
            raise ValueError("refeed before any target token was written")
        self.read_since_write = False
        return [self.last_target]


@dataclass
class ShiftAllocator(_AllocatorBase):
    """Baseline (a): every token takes the next position in event (physical) order."""

    next_position: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.next_position = self.prefix_len

    def _take(self, count: int) -> list[int]:
        positions = list(range(self.next_position, self.next_position + count))
        self._check_limit(positions)
        self.next_position += count
        return positions

    def read(self, n: int) -> list[int]:
        _check_count("read count", n)
        return self._take(n)

    def write(self, n: int) -> list[int]:
        _check_count("write count", n)
        with_header = n > 0 and not self.header_written
        positions = self._take(n + (self.header_len if with_header else 0))
        self.header_written = self.header_written or with_header
        return positions


def make_allocator(
    mode: str,
    *,
    prefix_len: int,
    header_len: int,
    slot_len: int = DEFAULT_SLOT_LEN,
    max_position: int | None = None,
    refeed: bool = False,
) -> ExposstAllocator | ShiftAllocator:
    """The incremental allocator for a cache-keeping mode (``exposst`` or ``shift``).

    ``refeed`` switches on the refeed rule (ExPosST only; the shift baseline keeps
    contiguous positions and no copies)."""
    if mode == "exposst":
        return ExposstAllocator(
            prefix_len, header_len, max_position, slot_len=slot_len, refeed_rule=refeed
        )
    if mode == "shift":
        return ShiftAllocator(prefix_len, header_len, max_position)
    raise ValueError(f"no incremental allocator for mode {mode!r}: use 'exposst' or 'shift'")


def allocator_from_state(state: dict[str, Any]) -> ExposstAllocator | ShiftAllocator:
    """The allocator :meth:`_AllocatorBase.state` described, in the same state."""
    kinds = {cls.__name__: cls for cls in (ExposstAllocator, ShiftAllocator)}
    values = dict(state)
    cls = kinds[values.pop("kind")]
    allocator = cls(**{f.name: values[f.name] for f in fields(cls) if f.init})
    for f in fields(cls):
        if not f.init:
            setattr(allocator, f.name, values[f.name])
    return allocator


def _run(allocator: ExposstAllocator | ShiftAllocator, events: Iterable[Event]) -> list[int]:
    positions = allocator.prefix()
    for event in events:
        positions += allocator.apply(event)
    return positions


def allocate(
    events: Iterable[Event],
    *,
    prefix_len: int,
    header_len: int,
    slot_len: int,
    max_position: int | None = None,
) -> list[int]:
    """ExPosST positions of every token in physical order.

    Physical order is the prefix, then the tokens of each event in order, with the
    header inserted right before the first target token.  ``allocate([("R", 2),
    ("W", 1), ("R", 1), ("W", 1), ("R", 1), ("W", 1)], prefix_len=3, header_len=1,
    slot_len=3)`` is ``[0, 1, 2, 3, 4, 6, 7, 5, 8, 9, 12]`` (design section 2).
    """
    allocator = ExposstAllocator(prefix_len, header_len, max_position, slot_len=slot_len)
    return _run(allocator, events)


def allocate_shift(
    events: Iterable[Event], *, prefix_len: int, header_len: int, max_position: int | None = None
) -> list[int]:
    """Shift baseline: contiguous positions in the same physical order as :func:`allocate`."""
    return _run(ShiftAllocator(prefix_len, header_len, max_position), events)


def offline_events(events: Iterable[Event]) -> list[Event]:
    """The offline order of the same tokens: all source, then all target."""
    checked = [check_event(event) for event in events]
    source = sum(n for kind, n in checked if kind == READ)
    target = sum(n for kind, n in checked if kind == WRITE)
    return [(READ, source), (WRITE, target)]


def allocate_offline(
    events: Iterable[Event], *, prefix_len: int, header_len: int, max_position: int | None = None
) -> list[int]:
    """Offline prompt, in *offline* physical order: prefix, all source, header, all target."""
    return allocate_shift(
        offline_events(events),
        prefix_len=prefix_len,
        header_len=header_len,
        max_position=max_position,
    )


def allocate_mode(
    mode: str,
    events: Iterable[Event],
    *,
    prefix_len: int,
    header_len: int,
    slot_len: int = DEFAULT_SLOT_LEN,
    max_position: int | None = None,
) -> list[int]:
    """Positions for any layout mode (``exposst``, ``shift`` or ``offline``)."""
    if mode == OFFLINE:
        return allocate_offline(
            events, prefix_len=prefix_len, header_len=header_len, max_position=max_position
        )
    allocator = make_allocator(
        mode,
        prefix_len=prefix_len,
        header_len=header_len,
        slot_len=slot_len,
        max_position=max_position,
    )
    return _run(allocator, events)
