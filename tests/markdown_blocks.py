"""The fenced code blocks of a Markdown file, each with the ``doc-test`` comment above it.

The README and docs/api.md announce how each shell or Python block is checked, on the
line above its fence (an HTML comment, invisible on GitHub)::

    <!-- doc-test: serve -->          a `vllm serve` command, started by the test
    <!-- doc-test: client -->         run against the server of the file's serve block
    <!-- doc-test: local -->          a command run on this machine, no server
    <!-- doc-test: not run: REASON -->

tests/server/test_doc_blocks.py runs them; tests/core/test_docs.py reads their flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- doc-test: (serve|client|local|not run: [^>]+?) -->\s*$")
RUNNABLE_LANGUAGES = ("bash", "python")


@dataclass(frozen=True)
class Block:
    doc: str  # file name
    line: int  # of the opening fence
    language: str
    text: str
    kind: str | None  # serve, client, local, "not run: ..." or None (unmarked)

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"

    def commands(self) -> list[str]:
        """A bash block's commands: continuation lines joined, comments dropped."""
        text = self.text.replace("\\\n", " ")
        lines = [line.split(" #", 1)[0].strip() for line in text.splitlines()]
        return [line for line in lines if line and not line.startswith("#")]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(
            Block(
                doc=path.name,
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(1),
                text=match.group(2),
                kind=marker.group(1) if marker else None,
            )
        )
    return found


def runnable_blocks(path: Path) -> list[Block]:
    """The shell and Python blocks (the ones that must be run or excused)."""
    return [block for block in blocks(path) if block.language in RUNNABLE_LANGUAGES]
