"""A session's READ/WRITE loop on the engine (mirrors :class:`reference._Run`, turn by turn).

READs only buffer source tokens (with positions from the session's allocator); the
buffer is sent as the next streaming chunk when the model must speak.  A WRITE of a
word is one engine turn that the scheduler ends at the next word boundary; the token
that ends it (the lookahead) is dropped by vLLM and sent again as the first token of
the next word if the policy WRITEs again (design section 3).

Modes: ``exposst`` (allocated positions through the worker patch), ``shift`` (vLLM's
own contiguous positions), ``recompute`` (every READ after target tokens restarts the
request with the offline prompt) and ``offline`` (whole source, then translate).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Protocol

from ..defaults import OFFLINE, target_token_limit
from ..layout import READ, WRITE, make_allocator
from ..policies import Offline, Policy, PolicyState
from ..prompts import PromptTemplate, word_delays
from .request import RequestTarget, Sampled, StreamRequest
from .source import SourceBuffer
from .types import SessionConfig, SessionResult, TargetPiece, TurnStats


class DecoderHost(Protocol):
    """What the decoder needs of its session."""

    id: str
    config: SessionConfig
    policy: Policy
    template: PromptTemplate
    target: RequestTarget
    source: SourceBuffer
    stats: TurnStats
    max_position: int
    opened: float

    def emit(self, piece: TargetPiece) -> None: ...

    def touch(self) -> None: ...


class SessionDecoder:
    """State of one session's loop: allocator, chunk buffer, lookahead, output so far."""

    def __init__(self, session: DecoderHost) -> None:
        self.s = session
        config, t = session.config, session.template
        self.mode = config.mode
        self.policy = Offline() if self.mode == OFFLINE else session.policy
        self.positions_allocated = self.mode == "exposst"  # else vLLM's own positions
        self.allocator = make_allocator(
            "exposst" if self.positions_allocated else "shift",
            prefix_len=t.prefix_len,
            header_len=t.header_len,
            slot_len=config.slot_len,
            max_position=session.max_position,
            refeed=config.refeed,
        )
        self.request: StreamRequest | None = None
        self.buffer: list[int] = list(t.prefix_ids)
        self.buffer_pos: list[int] = self.allocator.prefix()
        self.pending: tuple[int, float] | None = None  # sampled lookahead, not fed
        self.header_done = False
        self.source_ids: list[int] = []
        self.target_ids: list[int] = []
        self.logprobs: list[float] = []
        self.groups: list[tuple[list[int], int]] = []
        self.elapsed: list[float] = []
        self.restart = False  # recompute: next turn starts a new request
        self.unsent_source = 0  # source tokens read since the last chunk
        self.refeeds = 0

    def _salt(self) -> str | None:
        if not self.positions_allocated:
            return None  # contiguous positions: vLLM's own prefix caching is exact
        c, t = self.s.config, self.s.template
        key = (
            f"{c.slot_len}|{self.policy.spec}|{t.prefix_len}|{t.header_len}|"
            f"{c.max_word_tokens}|{c.refeed}"
        )
        return "exposst-" + hashlib.sha1(key.encode()).hexdigest()[:16]

    def _limit(self) -> int:
        return target_token_limit(self.s.source.tokens(), self.s.config.max_target_tokens)

    async def _send(self, decode: int, **turn: Any) -> Sampled:
        """Send the buffer as a chunk and run one turn (the model is asked for a token)."""
        if self.allocator.refeed_due:  # the refeed rule: predict from a copy, never shown
            self.buffer.append(self.target_ids[-1])
            self.buffer_pos += self.allocator.refeed()
            self.refeeds += 1
        if self.restart or self.request is None:
            if self.request is not None:
                await self.request.finish()
            self.request = StreamRequest(self.s.target, self.s.id, self.s.stats, self._salt())
            if self.mode in ("recompute", OFFLINE):
                self.buffer = self._offline_prompt()
            self.restart = False
        extra = {"word_stop_after": turn.pop("word_stop_after", 0)}
        if self.positions_allocated:
            extra.update(start=self.request.num_tokens, positions=self.buffer_pos, decode=decode)
        sampled = await self.request.turn(
            self.buffer, extra=extra, source_tokens=self.unsent_source, **turn
        )
        self.s.touch()
        self.buffer, self.buffer_pos, self.unsent_source = [], [], 0
        return sampled

    async def release(self, completed: bool) -> None:
        """Finish (after a completed sentence) or abort the engine request."""
        request, self.request = self.request, None
        if request is not None:
            await (request.finish() if completed else request.abort())

    def _offline_prompt(self) -> list[int]:
        t = self.s.template
        header = list(t.header_ids) if self.header_done else []
        return [*t.prefix_ids, *self.source_ids, *header, *self.target_ids]

    async def _peek(self) -> tuple[int, float]:
        if self.pending is None:
            self.pending = (await self._send(self._frontier(), max_tokens=1))[0]
        return self.pending

    def _read(self, index: int) -> None:
        unit = self.s.source.units[index]
        self.pending = None
        if self.mode in ("recompute", OFFLINE) and self.header_done:
            self.restart = True
        self.buffer += unit
        self.buffer_pos += self.allocator.read(len(unit))
        self.source_ids += unit
        self.unsent_source += len(unit)

    def _frontier(self) -> int:
        """Where the next generated target token will sit (ExPosST positions only)."""
        return self.allocator.frontier if self.positions_allocated else 0

    def _open_header(self) -> int:
        """Buffer the assistant header; returns the first target token's position."""
        positions = self.allocator.write(1)
        self.buffer += list(self.s.template.header_ids)
        self.buffer_pos += positions[:-1]
        self.header_done = True
        return positions[-1]

    async def _write(self) -> list[int] | None:
        """Write one unit; None when the model's first choice is the stop token."""
        if self.policy.unit == "token":
            tokens = await self._write_token()
        else:
            tokens = await self._write_word()
        if tokens is None:
            return None
        self.target_ids += [tok for tok, _ in tokens]
        self.logprobs += [lp for _, lp in tokens]
        return [tok for tok, _ in tokens]

    async def _write_token(self) -> Sampled | None:
        """One target token; it is fed with the next chunk at its allocated position."""
        stop = self.s.template.stop_id
        if not self.header_done:
            position = self._open_header()
            token = (await self._send(position, max_tokens=1, min_tokens=1))[0]
        else:
            if self.pending is None:
                self.pending = (await self._send(self._frontier(), max_tokens=1))[0]
            token = self.pending
            if token[0] == stop:
                return None
            position = self.allocator.write(1)[0]
        self.pending = None
        self.buffer.append(token[0])
        self.buffer_pos.append(position)
        return [token]

    async def _write_word(self) -> Sampled | None:
        """One target word: a turn the scheduler ends at the next word boundary.

        The turn's last sampled token is the lookahead (kept in ``pending``); the
        tokens before it were computed, and take consecutive target positions.
        """
        config, stop = self.s.config, self.s.template.stop_id
        cap = min(config.max_word_tokens, self._limit() - len(self.target_ids))
        if not self.header_done:
            first = self._open_header()
            sampled = await self._send(first, max_tokens=cap + 1, min_tokens=1, word_stop_after=2)
            tokens = sampled[:-1]
            self.allocator.write(len(tokens) - 1)  # the first one came with the header
        elif self.pending is not None:
            if self.pending[0] == stop:
                return None
            position = self.allocator.write(1)[0]
            self.buffer.append(self.pending[0])
            self.buffer_pos.append(position)
            sampled = await self._send(position + 1, max_tokens=cap, word_stop_after=1)
            tokens = [self.pending, *sampled[:-1]]
            self.allocator.write(len(sampled) - 1)
        else:
            sampled = await self._send(self._frontier(), max_tokens=cap + 1, word_stop_after=2)
            if sampled[0][0] == stop:
                self.pending = sampled[0]
                return None
            tokens = sampled[:-1]
            self.allocator.write(len(tokens))
        self.pending = sampled[-1]
        return tokens

    async def run(self) -> SessionResult:
        s, t, source = self.s, self.s.template, self.s.source
        read = written = 0
        previous_text = ""
        while len(self.target_ids) < self._limit():
            source_done = source.done(read)
            confidence = None
            if self.policy.needs_confidence and self.header_done and not source_done:
                confidence = math.exp((await self._peek())[1])
            action = self.policy.decide(PolicyState(read, written, source_done, confidence))
            if action == WRITE and self.pending is not None and self.pending[0] == t.stop_id:
                if source_done:
                    break
                action = READ
            if action == READ:
                if read >= len(source.units):
                    await source.wait_for(read)
                    continue
                self._read(read)
                read += 1
                continue
            tokens = await self._write()
            if tokens is None:
                continue
            written += 1
            delay = source.unit_word[read - 1] + 1 if read else 0
            self.groups.append((tokens, delay))
            text = t.decode(self.target_ids)
            now = time.monotonic() - s.opened
            self.elapsed.append(now)
            s.emit(
                TargetPiece(
                    text[len(previous_text) :], tokens, delay, now, self.logprobs[-len(tokens) :]
                )
            )
            previous_text = text
        return self._result()

    def _result(self) -> SessionResult:
        s, t = self.s, self.s.template
        elapsed = word_delays(t, [(g[0], i) for i, g in enumerate(self.groups)])
        return SessionResult(
            text=t.decode(self.target_ids),
            delays=word_delays(t, self.groups),
            elapsed=[self.elapsed[i] for i in elapsed],
            target_ids=self.target_ids,
            logprobs=self.logprobs,
            tokens_sent=s.stats.tokens_sent,
            source_words=s.source.words,
            source_tokens_read=len(self.source_ids),
            tokens_minimum=t.prefix_len
            + t.header_len
            + len(self.source_ids)
            + len(self.target_ids),
            refeeds=self.refeeds,
            request_ids=list(s.stats.request_ids),
            read_latencies=list(s.stats.read_latencies),
            decode_steps=list(s.stats.decode_steps),
        )
