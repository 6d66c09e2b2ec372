"""A session's READ/WRITE loop on the engine (mirrors :class:`reference._Run`, turn by turn).

READs only buffer source tokens (with positions from the session's allocator); the
buffer is sent as the next streaming chunk when the model must speak.  The words the
policy WRITEs before its next READ are one engine turn that the scheduler ends at the
word boundary after them (one word for confidence policies; the whole tail once the
source is done); the token that ends it (the lookahead) is dropped by vLLM and sent
again as the first token of the next word if the policy WRITEs again (design
section 3).  Words are passed on as they complete, not at the end of the turn.

Modes: ``exposst`` (allocated positions through the worker patch), ``shift`` (vLLM's
own contiguous positions), ``recompute`` (every READ after target tokens restarts the
request with the offline prompt) and ``offline`` (whole source, then translate).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Protocol

from ..defaults import CACHE_KEEPING_MODES, OFFLINE, limit_reached, target_token_limit
from ..layout import READ, WRITE, make_allocator
from ..policies import Offline, Policy, PolicyState
from ..prompts import PromptTemplate, finished_text, word_delays, word_starts
from .read_queue import Queued, ReadPlan, is_queued_chunk, queue_chunk, reads_ahead, turn_length
from .request import RequestTarget, Sampled, StreamRequest
from .source import SourceBuffer
from .types import SessionConfig, SessionError, SessionResult, TargetPiece, TurnStats


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
        self.text = ""  # the translation passed on so far
        self.queued: Queued | None = None  # a READ chunk sent behind the running turn
        self.queued_reads = 0

    def _salt(self) -> str | None:
        if not self.positions_allocated:
            return None  # contiguous positions: vLLM's own prefix caching is exact
        c, t = self.s.config, self.s.template
        key = (
            f"{c.slot_len}|{self.policy.spec}|{t.prefix_len}|{t.header_len}|"
            f"{c.max_word_tokens}|{c.refeed}"
        )
        return "exposst-" + hashlib.sha1(key.encode()).hexdigest()[:16]

    def _limit(self, more_source: int = 0) -> int:
        """The target length limit by the source read so far (and ``more_source``
        tokens more): the policy, not the speaker's pace, decides it (defaults.py)."""
        return target_token_limit(
            len(self.source_ids) + more_source, self.s.config.max_target_tokens
        )

    async def _send(self, decode: int, plan: ReadPlan | None = None, **turn: Any) -> Sampled:
        """Send the buffer as a chunk and run one turn (the model is asked for a token).

        A queued READ already sent for this chunk is collected instead (after checking it
        is this chunk); ``plan`` queues the READ after this turn behind it."""
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
        extra = dict(turn.pop("words", {}))
        if self.positions_allocated:
            extra.update(start=self.request.num_tokens, positions=self.buffer_pos, decode=decode)
        queued, self.queued = self.queued, None
        start = self.request.num_tokens
        if queued is not None and not is_queued_chunk(
            queued, self.buffer, extra, turn["max_tokens"], self.target_ids[-1], start
        ):
            raise SessionError("internal error: a queued READ differs from the session's chunk")
        follow = None
        if plan is not None:
            follow = queue_chunk(
                plan,
                source=self.s.source,
                max_word_tokens=self.s.config.max_word_tokens,
                stop_id=self.s.template.stop_id,
                allocator=self.allocator if self.positions_allocated else None,
                model_room=self.request.room(len(self.buffer)),
                max_tokens=turn["max_tokens"],
            )
        behind = dict(
            queue=follow.chunk if follow else None,
            turn_length=turn_length(plan, self.s.template.stop_id, self._split_words)
            if follow
            else None,
        )
        if queued is not None:
            self.queued_reads += 1
            sampled = await self.request.collect_queued(
                len(self.buffer),
                source_tokens=self.unsent_source,
                on_sampled=turn.get("on_sampled"),
                **behind,
            )
        else:
            sampled = await self.request.turn(
                self.buffer, extra=extra, source_tokens=self.unsent_source, **turn, **behind
            )
        self.queued = follow
        self.s.touch()
        self.buffer, self.buffer_pos, self.unsent_source = [], [], 0
        return sampled

    def _may_queue(self, count: int | None) -> bool:
        """May the READ after a turn of ``count`` words go behind it (queued_read.py)?"""
        return self.s.config.queue_reads and self.mode in CACHE_KEEPING_MODES and count is not None

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

    def _planned_words(self, read: int, written: int, source_done: bool) -> int | None:
        """How many words the policy WRITEs before its next READ, when counts alone
        decide (None: to the end of the translation).

        Those words are then one engine turn, so no round trip through this loop (and
        no step skipped while the next chunk travels) separates them: the tail after
        the speaker's last word, and wait-k catching up after a burst of source.
        """
        if self.policy.needs_confidence:
            return 1
        if source_done:
            return None
        planned = 1
        while planned < self._limit() and (
            self.policy.decide(PolicyState(read, written + planned, False)) == WRITE
        ):
            planned += 1
        return planned

    def _split_words(self, tokens: Sampled) -> list[Sampled]:
        """A turn's target tokens (the fed lookahead first) cut into words."""
        ids = [token for token, _ in tokens]
        table, cap = self.s.template.word_start, self.s.config.max_word_tokens
        cuts = [0, *word_starts(ids, table, cap), len(tokens)]
        return [tokens[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]

    async def _write_words(
        self, count: int | None, delay: int, read: int = 0, written: int = 0
    ) -> int:
        """Write up to ``count`` words (None: until the stop token or the limit) in one
        turn, which the scheduler ends where the word after them begins.

        The turn's last sampled token is the lookahead (kept in ``pending``, fed first
        in the next turn); the tokens before it were computed and take consecutive
        target positions.  Each word is passed on as soon as the token after it is
        sampled.  Returns the number of words: 0 when the model's first choice is the
        stop token (then kept in ``pending``).
        """
        config, stop = self.s.config, self.s.template.stop_id
        room = self._limit() - len(self.target_ids)  # a queued READ's chunk has the same
        carried: Sampled = []
        turn: dict[str, Any] = {}
        if not self.header_done:
            decode, allocated = self._open_header(), 1
            turn["min_tokens"] = 1
        elif self.pending is not None:
            if self.pending[0] == stop:
                return 0
            carried, allocated = [self.pending], 1
            position = self.allocator.write(1)[0]
            self.buffer.append(self.pending[0])
            self.buffer_pos.append(position)
            decode = position + 1
        else:
            decode, allocated = self._frontier(), 0
        budget = room if count is None else min(room, count * config.max_word_tokens)
        plan = None
        if self._may_queue(count) and (
            (reads := reads_ahead(self.policy, self.s.source, read, written + count)) is not None
        ):
            after = self._planned_words(reads, written + count, self.s.source.done(reads))
            fed = sum(len(unit) for unit in self.s.source.units[read:reads])
            growth = self._limit(fed) - self._limit()  # what the READ adds to the limit
            plan = ReadPlan(count, carried, allocated, read, reads, after, room, growth)
        words = {"carried": len(carried), "max_word_tokens": config.max_word_tokens}
        if count is not None:
            words["words"] = count
        passed = 0

        def pass_on(sampled: Sampled) -> None:
            nonlocal passed
            for word in self._split_words(carried + sampled)[passed:-1]:
                self._commit(word, delay)
                passed += 1

        sampled = await self._send(
            decode,
            plan,
            max_tokens=budget + 1 - len(carried),
            words=words,
            on_sampled=pass_on,
            **turn,
        )
        self.pending = sampled[-1]
        if self.queued is not None:  # the engine keeps it only if the turn ended as planned
            if not self.queued.read.holds(self.pending[0]):
                self.queued = None
            else:
                self.queued.kept = len(sampled) - 1
        written = carried + sampled[:-1]
        for word in self._split_words(written)[passed:]:
            self._commit(word, delay)
            passed += 1
        self.allocator.write(len(written) - allocated)
        if self.queued is not None and passed != count:
            raise SessionError("internal error: a turn with a queued READ wrote other words")
        return passed

    def _commit(self, word: Sampled, delay: int) -> None:
        """Add a written unit to the translation and pass it on to the client."""
        tokens = [token for token, _ in word]
        self.target_ids += tokens
        self.logprobs += [logprob for _, logprob in word]
        self.groups.append((tokens, delay))
        now = time.monotonic() - self.s.opened
        self.elapsed.append(now)
        text = finished_text(self.s.template.decode(self.target_ids))
        self._pass_on(text, tokens, delay, now, self.logprobs[-len(tokens) :])

    def _pass_on(
        self, text: str, tokens: list[int], delay: int, now: float, logprobs: list[float]
    ) -> None:
        """Emit what ``text`` (the translation so far) adds to what was passed on; the
        pieces' texts joined are always a prefix of the translation."""
        piece = text[len(self.text) :]
        self.text += piece
        self.s.emit(TargetPiece(piece, tokens, delay, now, logprobs))

    def _flush(self) -> None:
        """At the end: pass on what was held back (an unfinished character the model
        never completed), so that the pieces' texts join to the result's text."""
        text = self.s.template.decode(self.target_ids)
        if len(text) > len(self.text):
            delay = self.groups[-1][1] if self.groups else 0
            self._pass_on(text, [], delay, time.monotonic() - self.s.opened, [])

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

    async def run(self) -> SessionResult:
        t, source = self.s.template, self.s.source
        read = written = 0
        while True:
            source_done = source.done(read)
            confidence = None
            if self.policy.needs_confidence and self.header_done and not source_done:
                confidence = math.exp((await self._peek())[1])
            action = self.policy.decide(PolicyState(read, written, source_done, confidence))
            limit = limit_reached(
                len(self.target_ids),
                len(self.source_ids),
                source_done,
                self.s.config.max_target_tokens,
            )
            if limit == "stop":
                break
            if limit == "read":  # the translation ran ahead of the source: read on
                action = READ
            elif action == WRITE and self.pending is not None and self.pending[0] == t.stop_id:
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
            delay = source.unit_word[read - 1] + 1 if read else 0
            if self.policy.unit == "token":
                token = await self._write_token()
                if token is not None:
                    self._commit(token, delay)
                written += token is not None
                continue
            count = self._planned_words(read, written, source_done)
            written += await self._write_words(count, delay, read, written)
        self._flush()
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
            tokens_cached=s.stats.tokens_cached,
            source_words=s.source.words,
            source_tokens_read=len(self.source_ids),
            tokens_minimum=t.prefix_len
            + t.header_len
            + len(self.source_ids)
            + len(self.target_ids),
            refeeds=self.refeeds,
            queued_reads=self.queued_reads,
            request_ids=list(s.stats.request_ids),
            turns=s.stats.turns,
            read_latencies=list(s.stats.read_latencies),
            decode_steps=list(s.stats.decode_steps),
        )
