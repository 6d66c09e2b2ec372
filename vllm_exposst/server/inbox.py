"""A connection's client frames, read from the socket as they arrive and handled in order.

The socket is read by a task of its own that never waits for the engine.  Were the
frames read only when the previous event had been handled (an append waits for room
when ``TALK_SENTENCES_IN_FLIGHT`` sentences translate), the WebSocket library would stop
reading the socket too, the client's ping and pong frames would wait behind the unread
text, and the keepalive would close a client that sends faster than it is translated
(1011).  Source text is small (an hour of talk is about 50 KB), so the inbox holds what
the talk has not taken yet, up to the server's ``input_queue_chars`` characters
(``MAX_QUEUED_INPUT_CHARS`` unless set); a frame past
that bound is dropped and the client is told, in order, by an ``error`` event
(``input_queue_full``, status 429).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..defaults import MAX_QUEUED_INPUT_CHARS


@dataclass
class Dropped:
    """Frames dropped at this point of the stream because the inbox was full."""

    frames: int = 1
    chars: int = 0


def frame_size(message: dict[str, Any]) -> int:
    """The characters (or bytes) a frame holds."""
    return len(message.get("text") or message.get("bytes") or "")


class Inbox:
    """Frames in arrival order, at most ``limit`` characters held; ``put`` never waits."""

    def __init__(self, limit: int = MAX_QUEUED_INPUT_CHARS) -> None:
        self.limit = limit
        self.frames: deque[dict[str, Any] | Dropped] = deque()
        self.chars = 0
        self.ready = asyncio.Event()

    def put(self, message: dict[str, Any]) -> bool:
        """Queue a frame; False (and a :class:`Dropped` mark in its place) past the bound."""
        size = frame_size(message)
        if self.chars + size > self.limit:
            last = self.frames[-1] if self.frames else None
            if isinstance(last, Dropped):  # one mark for a run of dropped frames
                last.frames += 1
                last.chars += size
            else:
                self.frames.append(Dropped(1, size))
            self.ready.set()
            return False
        self.frames.append(message)
        self.chars += size
        self.ready.set()
        return True

    async def get(self) -> dict[str, Any] | Dropped:
        """The oldest frame (or drop mark), once there is one."""
        while not self.frames:
            self.ready.clear()
            await self.ready.wait()
        item = self.frames.popleft()
        if not isinstance(item, Dropped):
            self.chars -= frame_size(item)
        return item
