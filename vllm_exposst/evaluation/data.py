"""Parallel test sets: one sentence per line, line i of the source translates line i."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    index: int  # line number in the files (0-based), as SimulEval numbers instances
    source: str
    reference: str


def read_lines(path: str | Path) -> list[str]:
    """Lines without their line break (blank lines kept, so indices match the file)."""
    return Path(path).read_text(encoding="utf-8").splitlines()


def load_pairs(
    source: str | Path, target: str | Path, start: int = 0, limit: int | None = None
) -> list[Pair]:
    """The slice ``[start, start + limit)`` of a parallel test set."""
    sources, targets = read_lines(source), read_lines(target)
    if len(sources) != len(targets):
        raise ValueError(
            f"{source} has {len(sources)} lines but {target} has {len(targets)}: not parallel"
        )
    if start < 0 or (limit is not None and limit < 0):
        raise ValueError("start and limit must be >= 0")
    end = len(sources) if limit is None else min(len(sources), start + limit)
    pairs = [Pair(i, sources[i].strip(), targets[i].strip()) for i in range(start, end)]
    empty = [p.index for p in pairs if not p.source.split()]
    if empty:
        raise ValueError(f"empty source lines in {source}: {empty[:5]}")
    return pairs
