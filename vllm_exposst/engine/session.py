"""One simultaneous translation: the client pushes source text and reads target pieces.

The READ/WRITE loop itself runs in :class:`~vllm_exposst.engine.decoder.SessionDecoder`
as a task next to the client; this class is the client's side and the session's
life cycle (start, idle, end, close).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

from ..layout import PositionLimitError
from ..policies import Policy
from ..prompts import PromptTemplate
from .decoder import SessionDecoder
from .request import RequestTarget
from .source import SourceBuffer
from .types import (
    EngineDead,
    SessionConfig,
    SessionError,
    SessionResult,
    SessionTooLong,
    TargetPiece,
    TurnStats,
)


class Session:
    """One sentence (or stream of sentences' words) translated under a policy."""

    def __init__(
        self,
        config: SessionConfig,
        policy: Policy,
        template: PromptTemplate,
        target: RequestTarget,
        *,
        max_position: int,
        on_end: Callable[[Session], None],
    ) -> None:
        self.config, self.policy, self.template, self.target = config, policy, template, target
        self.max_position = max_position
        self._on_end = on_end  # the engine forgets the session
        self.id = f"exposst-{uuid.uuid4().hex[:16]}"
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self.source = SourceBuffer(self.template, policy.unit)
        self.stats = TurnStats()
        self._pieces: asyncio.Queue[TargetPiece | BaseException | None] = asyncio.Queue()
        self._done = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None

    # -- client side ------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def push(self, text: str) -> None:
        """Add source text; a word counts once whitespace (or :meth:`finish`) ends it."""
        self.touch()
        words = self.source.words
        self.source.push(text)
        if self.source.words > words and not self.ended:
            self.source.idle.clear()  # an ended session stays idle: nothing will run

    async def finish(self) -> None:
        """The source is complete."""
        self.touch()
        self.source.finish()
        if not self.ended:
            self.source.idle.clear()

    def touch(self) -> None:
        """Something happened: the idle-timeout clock starts again."""
        self.last_activity = time.monotonic()

    @property
    def ended(self) -> bool:
        """The sentence is over (translated, failed or closed)."""
        return self._done.done()

    @property
    def waiting_for_source(self) -> bool:
        """The policy wants a word that has not been pushed; all pieces so far are queued."""
        return self.source.idle.is_set() and not self._done.done()

    async def wait_idle(self) -> None:
        """Until the session waits for more source or has ended (for SimulEval-style
        drivers that push one word and then collect what it unlocked)."""
        await self.source.idle.wait()

    def emit(self, piece: TargetPiece) -> None:
        """Queue a written piece for the client (called by the decoder)."""
        self._pieces.put_nowait(piece)

    def pending_pieces(self) -> list[TargetPiece]:
        """Take the pieces written so far without waiting (errors are raised)."""
        pieces = []
        while not self._pieces.empty():
            item = self._pieces.get_nowait()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._pieces.put_nowait(None)  # keep the end mark for iterators
                break
            pieces.append(item)
        return pieces

    def __aiter__(self) -> AsyncIterator[TargetPiece]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TargetPiece]:
        while True:
            item = await self._pieces.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def result(self) -> SessionResult:
        return await asyncio.shield(self._done)

    async def close(self) -> None:
        """End the session and free its engine resources."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._on_end(self)

    async def abort(self, error: SessionError | None = None) -> None:
        error = error or SessionError("session aborted")
        self._fail(error)
        await self.close()

    def _fail(self, error: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(error)
            self._done.exception()  # mark retrieved: the client may never await it
        self._pieces.put_nowait(error)

    # -- the policy loop ----------------------------------------------------------
    async def _run(self) -> None:
        decoder = SessionDecoder(self)
        completed = False
        try:
            result = await decoder.run()
            completed = True
            self._done.set_result(result)
            self._pieces.put_nowait(None)
        except asyncio.CancelledError:
            self._fail(SessionError("session closed"))
            raise
        except PositionLimitError as err:
            self._fail(SessionTooLong(str(err)))
        except SessionError as err:
            self._fail(err)
        except Exception as err:  # engine errors: report, keep the server alive
            if type(err).__name__ == "EngineDeadError":  # vllm.v1.engine.exceptions
                self._fail(EngineDead(f"the engine died: {err}"))
            else:
                self._fail(SessionError(f"{type(err).__name__}: {err}"))
        finally:
            await decoder.release(completed)
            self._on_end(self)
            self.source.idle.set()
