"""Simultaneous translation sessions over vLLM's ``AsyncLLM`` streaming input.

A :class:`Session` runs its policy next to the engine.  READs only buffer source
tokens (with positions from the session's allocator); the buffer is sent as the
next streaming chunk when the model must speak.  A WRITE of a word is one engine
turn that the scheduler ends at the next word boundary; the token that ends it
(the lookahead) is dropped by vLLM and sent again as the first token of the next
word if the policy WRITEs again (design section 3).

Modes: ``exposst`` (allocated positions through the hook), ``shift`` (vLLM's own
contiguous positions), ``recompute`` (every READ after target tokens restarts the
request with the offline prompt) and ``offline`` (whole source, then translate).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .adapter_meta import read_adapter_meta, session_defaults
from .config import MODES, ExposstOptions
from .layout import DEFAULT_SLOT_LEN, READ, WRITE, PositionLimitError, make_allocator
from .policies import Offline, Policy, PolicyState, parse_policy
from .prompts import PromptTemplate, build_prompt, split_words
from .reference import word_delays
from .train_layout import units

SESSION_MODES = MODES


class SessionError(RuntimeError):
    """A session failed; the engine and other sessions are unaffected."""

    code = "session_error"


class SessionRejected(SessionError):
    """No room for another session now (sessions or KV blocks): retry later."""

    code = "session_rejected"


class SessionTimeout(SessionError):
    code = "idle_timeout"


class UnknownModelError(ValueError):
    """A request names a model or adapter the engine does not serve."""


@dataclass
class SessionConfig:
    """How one session translates."""

    source_lang: str = "English"
    target_lang: str = "German"
    policy: str = "wait-3"
    slot_len: int = DEFAULT_SLOT_LEN
    mode: str = "exposst"
    lora: str | None = None
    system_prompt: str | None = None
    max_word_tokens: int = 16
    max_target_tokens: int | None = None

    def validate(self) -> Policy:
        if self.mode not in SESSION_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {SESSION_MODES}")
        if not isinstance(self.slot_len, int) or self.slot_len < 1:
            raise ValueError(f"slot_len must be an integer >= 1, got {self.slot_len!r}")
        if self.max_word_tokens < 1:
            raise ValueError("max_word_tokens must be >= 1")
        return parse_policy(self.policy)


@dataclass(frozen=True)
class TargetPiece:
    """One written unit (a word, or a token for token-level policies)."""

    text: str  # text added to the translation (may start with a space)
    token_ids: list[int]
    source_words_read: int
    time: float  # seconds since the session opened
    logprobs: list[float] = field(default_factory=list)


@dataclass
class SessionResult:
    text: str
    delays: list[int]  # per whitespace word of ``text``
    elapsed: list[float]  # per whitespace word: seconds since the session opened
    target_ids: list[int]
    logprobs: list[float]
    tokens_sent: int  # tokens the session asked the engine to compute (client count)
    source_words: int
    source_tokens_read: int
    tokens_minimum: int  # prefix + header + source read + target: each computed once
    request_ids: list[str]
    read_latencies: list[float]  # chunk with new source -> its first sampled token (s)
    decode_steps: list[float]  # seconds per generated token in word-continuation turns


class SimulEngine:
    """Opens sessions on one ``AsyncLLM`` started with ExPosST's scheduler.

    Session settings are layered: server options (``--additional-config``), then
    the adapter's ``exposst.json``, then what the request asks for.
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        options: ExposstOptions | None = None,
        lora_requests: dict[str, Any] | None = None,
        lora_modules: dict[str, str] | None = None,
        **limits: Any,
    ) -> None:
        self.llm, self.tokenizer = llm, tokenizer
        options = options or ExposstOptions.from_additional_config(
            llm.vllm_config.additional_config
        )
        self.options = dataclasses.replace(options, **limits) if limits else options
        self.max_model_len = llm.vllm_config.model_config.max_model_len
        self.block_size = llm.vllm_config.cache_config.block_size
        self.max_sessions = (
            self.options.max_sessions or llm.vllm_config.scheduler_config.max_num_seqs
        )
        self.session_max_tokens = self.options.session_max_tokens
        self.idle_timeout = self.options.idle_timeout
        self.sessions: dict[str, Session] = {}
        self._templates: dict[tuple, PromptTemplate] = {}
        self._lora: dict[str, Any] = lora_requests if lora_requests is not None else {}
        self._lora_ids = itertools.count(1000)
        for name, path in (lora_modules or {}).items():
            self.add_lora(name, path)
        self._reaper: asyncio.Task | None = None
        self._admitting = 0  # sessions past the count check, not yet registered
        self._total_blocks: int | None = None

    @classmethod
    def from_engine_args(cls, engine_args: Any = None, /, **kwargs: Any) -> SimulEngine:
        """Start an ``AsyncLLM`` with the ExPosST scheduler (``kwargs`` are ``AsyncEngineArgs``
        plus ``lora_modules`` and the limits of :class:`ExposstOptions`)."""
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from .plugin import SCHEDULER_CLS, apply_env_defaults

        apply_env_defaults()
        own = {f.name for f in dataclasses.fields(ExposstOptions)} | {"lora_modules"}
        session_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        args = engine_args or AsyncEngineArgs(**kwargs)
        args.scheduler_cls = args.scheduler_cls or SCHEDULER_CLS
        llm = AsyncLLM.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(llm.vllm_config.model_config.tokenizer)
        lora_modules = session_kwargs.pop("lora_modules", None)
        return cls(llm, tokenizer, lora_modules=lora_modules, **session_kwargs)

    def session_config(self, **fields: Any) -> SessionConfig:
        """Server options, then the adapter's ``exposst.json``, then ``fields`` (None = unset)."""
        known = {f.name for f in dataclasses.fields(SessionConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown session option(s) {unknown}; known: {sorted(known)}")
        o = self.options
        values: dict[str, Any] = dict(
            policy=o.policy,
            slot_len=o.slot_len,
            mode=o.mode,
            source_lang=o.source_lang,
            target_lang=o.target_lang,
        )
        lora = fields.get("lora")
        if lora is not None:
            if lora not in self._lora:
                raise UnknownModelError(
                    f"unknown LoRA adapter {lora!r}; known: {sorted(self._lora)}"
                )
            values.update(session_defaults(read_adapter_meta(self._lora[lora].lora_path)))
        values.update({k: v for k, v in fields.items() if v is not None})
        return SessionConfig(**values)

    def add_lora(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        self._lora[name] = LoRARequest(name, next(self._lora_ids), str(path))

    def template(self, config: SessionConfig) -> PromptTemplate:
        key = (config.source_lang, config.target_lang, config.system_prompt)
        if key not in self._templates:
            self._templates[key] = build_prompt(
                self.tokenizer,
                config.source_lang,
                config.target_lang,
                system_prompt=config.system_prompt,
            )
        return self._templates[key]

    async def stats(self) -> dict:
        """Scheduler counts: sessions, KV blocks, tokens computed per request id."""
        return await self.llm.engine_core.call_utility_async("exposst_stats")

    async def tokens_computed(self, request_ids: list[str]) -> int:
        """Tokens the engine really computed for these requests (recomputation included)."""
        counts = (await self.stats())["tokens_computed"]
        return sum(counts.get(request_id, 0) for request_id in request_ids)

    async def open(self, config: SessionConfig | None = None, **overrides: Any) -> Session:
        """Admit and start a session, or raise :class:`SessionRejected` (retryable).

        Without ``config`` the settings come from :meth:`session_config`."""
        if config is None:
            config = self.session_config(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        policy = config.validate()
        if config.lora is not None and config.lora not in self._lora:
            raise UnknownModelError(
                f"unknown LoRA adapter {config.lora!r}; known: {sorted(self._lora)}"
            )
        await self._admit()
        try:
            session = Session(self, config, policy)
            self.sessions[session.id] = session
        finally:
            self._admitting -= 1
        session.start()
        self._ensure_reaper()
        return session

    async def _admit(self) -> None:
        """Count the session in before any await, so concurrent opens cannot overshoot."""
        open_now = len(self.sessions) + self._admitting
        if open_now >= self.max_sessions:
            raise SessionRejected(
                f"server busy: {open_now} sessions open (limit {self.max_sessions}); retry later"
            )
        self._admitting += 1
        try:
            if self._total_blocks is None:
                self._total_blocks = (await self.stats())["total_blocks"]
            per_session = math.ceil(self.session_max_tokens / self.block_size)
            reserved = per_session * (len(self.sessions) + self._admitting)
            if reserved > self._total_blocks:
                raise SessionRejected(
                    f"not enough KV cache for another session ({reserved} blocks would be "
                    f"reserved, {self._total_blocks} exist); retry later"
                )
        except BaseException:
            self._admitting -= 1
            raise

    def _ensure_reaper(self) -> None:
        if self.idle_timeout and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self.sessions:
            await asyncio.sleep(min(self.idle_timeout, 1.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_activity > self.idle_timeout:
                    await session.abort(
                        SessionTimeout(
                            f"session idle for more than {self.idle_timeout:g} s; closed"
                        )
                    )

    async def translate(self, source: str, **overrides: Any) -> SessionResult:
        """Batch use: feed a whole sentence word by word under the policy."""
        session = await self.open(**overrides)
        try:
            await session.push(source)
            await session.finish()
            return await session.result()
        finally:
            await session.close()

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self.llm.shutdown()


class Session:
    """One simultaneous translation: push source text, read target pieces."""

    def __init__(self, engine: SimulEngine, config: SessionConfig, policy: Policy) -> None:
        self.engine, self.config, self.policy = engine, config, policy
        self.id = f"exposst-{uuid.uuid4().hex[:16]}"
        self.template = engine.template(config)
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self._partial = ""  # text after the last whitespace: a word still arriving
        self._source_units: list[list[int]] = []
        self._unit_word: list[int] = []
        self._source_words = 0
        self._source_finished = False
        self._source_event = asyncio.Event()
        # set while the policy waits for a source word not pushed yet (every piece
        # written so far is queued by then) and once the session has ended
        self._idle = asyncio.Event()
        self._pieces: asyncio.Queue[TargetPiece | BaseException | None] = asyncio.Queue()
        self._done = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None
        self._request: _Request | None = None
        self.request_ids: list[str] = []  # engine requests (several in recompute mode)
        self.tokens_sent = 0
        # seconds from sending a chunk to its first sampled token: turns that carry new
        # source (READ-to-WRITE latency) and per generated token of the other turns
        self.read_latencies: list[float] = []
        self.decode_steps: list[float] = []

    # -- client side ------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def push(self, text: str) -> None:
        """Add source text; a word counts once whitespace (or :meth:`finish`) ends it."""
        if self._source_finished:
            raise SessionError("source already finished")
        self.last_activity = time.monotonic()
        combined = self._partial + text
        words = split_words(combined)
        if combined and not combined[-1].isspace() and words:
            self._partial = words.pop()
        else:
            self._partial = ""
        self._add_words(words)

    async def finish(self) -> None:
        """The source is complete."""
        self.last_activity = time.monotonic()
        if self._partial:
            self._add_words([self._partial])
            self._partial = ""
        self._source_finished = True
        if not self.ended:
            self._idle.clear()
        self._source_event.set()

    def _add_words(self, words: list[str]) -> None:
        for word in words:
            ids = self.template.word_ids(word, self._source_words)
            for unit in units([ids], self.policy.unit):
                self._source_units.append(unit)
                self._unit_word.append(self._source_words)
            self._source_words += 1
        if words:
            if not self.ended:  # an ended session stays idle: nothing will run
                self._idle.clear()
            self._source_event.set()

    @property
    def ended(self) -> bool:
        """The sentence is over (translated, failed or closed)."""
        return self._done.done()

    @property
    def waiting_for_source(self) -> bool:
        """The policy wants a word that has not been pushed; all pieces so far are queued."""
        return self._idle.is_set() and not self._done.done()

    async def wait_idle(self) -> None:
        """Until the session waits for more source or has ended (for SimulEval-style
        drivers that push one word and then collect what it unlocked)."""
        await self._idle.wait()

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
        self.engine.sessions.pop(self.id, None)

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
        completed = False
        try:
            result = await _Decoder(self).run()
            completed = True
            self._done.set_result(result)
            self._pieces.put_nowait(None)
        except asyncio.CancelledError:
            self._fail(SessionError("session closed"))
            raise
        except PositionLimitError as err:
            self._fail(SessionError(str(err)))
        except SessionError as err:
            self._fail(err)
        except Exception as err:  # engine errors: report, keep the server alive
            self._fail(SessionError(f"{type(err).__name__}: {err}"))
        finally:
            request, self._request = self._request, None
            if request is not None:
                await (request.finish() if completed else request.abort())
            self.engine.sessions.pop(self.id, None)
            self._idle.set()


class _Request:
    """One vLLM streaming-input request: chunks in, sampled tokens out."""

    def __init__(self, session: Session, salt: str | None) -> None:
        self.session = session
        self.request_id = f"{session.id}-{uuid.uuid4().hex[:6]}"
        session.request_ids.append(self.request_id)
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.salt = salt
        self.num_tokens = 0  # tokens the engine holds for this request (physical count)
        self.outputs = None
        self.finished = False

    async def _stream(self):
        while True:
            item = await self.inputs.get()
            if item is None:
                return
            yield item

    async def turn(
        self,
        tokens: list[int],
        *,
        max_tokens: int,
        extra: dict,
        min_tokens: int = 0,
        source_tokens: int = 0,
    ) -> list[tuple[int, float]]:
        from vllm import SamplingParams
        from vllm.engine.protocol import StreamingInput
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        session = self.session
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            logprobs=0,
            ignore_eos=True,
            stop_token_ids=[session.template.stop_id],
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            extra_args={"exposst": extra},
        )
        prompt = TokensPrompt(prompt_token_ids=list(tokens))
        if self.outputs is None and self.salt:
            prompt["cache_salt"] = self.salt
        sent_at = time.perf_counter()
        await self.inputs.put(StreamingInput(prompt=prompt, sampling_params=params))
        if self.outputs is None:
            engine = session.engine
            self.outputs = engine.llm.generate(
                self._stream(),
                params,
                self.request_id,
                lora_request=engine._lora.get(session.config.lora),
            ).__aiter__()
        sampled: list[tuple[int, float]] = []
        first_at = None
        while True:
            output = await self.outputs.__anext__()
            first_at = first_at or time.perf_counter()
            completion = output.outputs[0]
            for i, token in enumerate(completion.token_ids):
                logprob = completion.logprobs[i][token].logprob if completion.logprobs else 0.0
                sampled.append((token, logprob))
            if completion.finish_reason is not None or output.finished:
                break
        finished_at = time.perf_counter()
        if source_tokens:
            session.read_latencies.append(first_at - sent_at)
        elif len(sampled) > 1:
            session.decode_steps.append((finished_at - first_at) / (len(sampled) - 1))
        self.num_tokens += len(tokens) + len(sampled) - 1
        session.tokens_sent += len(tokens) + len(sampled) - 1
        session.last_activity = time.monotonic()
        return sampled

    async def finish(self) -> None:
        """Close the input stream: the engine finishes the request and frees its blocks."""
        if self.outputs is not None and not self.finished:
            self.finished = True
            await self.inputs.put(None)
            with contextlib.suppress(Exception):
                async for _ in self.outputs:
                    pass

    async def abort(self) -> None:
        if not self.finished:
            self.finished = True
            await self.session.engine.llm.abort(self.request_id)


class _Decoder:
    """The session's READ/WRITE loop (mirrors :class:`reference._Run`, on the engine)."""

    def __init__(self, session: Session) -> None:
        self.s = session
        config, t = session.config, session.template
        self.mode = config.mode
        self.policy = Offline() if self.mode == "offline" else session.policy
        self.cache_mode = "exposst" if self.mode == "exposst" else "shift"
        self.allocator = make_allocator(
            self.cache_mode,
            prefix_len=t.prefix_len,
            header_len=t.header_len,
            slot_len=config.slot_len,
            max_position=session.engine.max_model_len,
        )
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

    def _salt(self) -> str | None:
        if self.mode != "exposst":
            return None  # contiguous positions: vLLM's own prefix caching is exact
        c, t = self.s.config, self.s.template
        key = f"{c.slot_len}|{self.policy.spec}|{t.prefix_len}|{t.header_len}|{c.max_word_tokens}"
        return "exposst-" + hashlib.sha1(key.encode()).hexdigest()[:16]

    def _limit(self) -> int:
        cap = self.s.config.max_target_tokens
        return cap or 2 * sum(len(u) for u in self.s._source_units) + 16

    async def _send(self, decode: int, **turn: Any) -> list[tuple[int, float]]:
        """Send the buffer as a chunk and run one turn."""
        s = self.s
        if self.restart or s._request is None:
            if s._request is not None:
                await s._request.finish()
            s._request = _Request(s, self._salt())
            if self.mode in ("recompute", "offline"):
                self.buffer = self._offline_prompt()
            self.restart = False
        extra = {"word_stop_after": turn.pop("word_stop_after", 0)}
        if self.mode == "exposst":
            extra.update(start=s._request.num_tokens, positions=self.buffer_pos, decode=decode)
        sampled = await s._request.turn(
            self.buffer, extra=extra, source_tokens=self.unsent_source, **turn
        )
        self.buffer, self.buffer_pos, self.unsent_source = [], [], 0
        return sampled

    def _offline_prompt(self) -> list[int]:
        t = self.s.template
        header = list(t.header_ids) if self.header_done else []
        return [*t.prefix_ids, *self.source_ids, *header, *self.target_ids]

    async def _peek(self) -> tuple[int, float]:
        if self.pending is None:
            self.pending = (await self._send(self._frontier(), max_tokens=1))[0]
        return self.pending

    def _read(self, index: int) -> None:
        unit = self.s._source_units[index]
        self.pending = None
        if self.mode in ("recompute", "offline") and self.header_done:
            self.restart = True
        self.buffer += unit
        self.buffer_pos += self.allocator.read(len(unit))
        self.source_ids += unit
        self.unsent_source += len(unit)

    def _frontier(self) -> int:
        """Where the next generated target token will sit (ExPosST positions only)."""
        return self.allocator.frontier if self.cache_mode == "exposst" else 0

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

    async def _write_token(self) -> list[tuple[int, float]] | None:
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

    async def _write_word(self) -> list[tuple[int, float]] | None:
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

    async def _wait_for_source(self, read: int) -> None:
        s = self.s
        while read >= len(s._source_units) and not s._source_finished:
            s._source_event.clear()
            s._idle.set()
            await s._source_event.wait()

    async def run(self) -> SessionResult:
        s, t = self.s, self.s.template
        read = written = 0
        previous_text = ""
        while len(self.target_ids) < self._limit():
            source_done = s._source_finished and read == len(s._source_units)
            confidence = None
            if self.policy.needs_confidence and self.header_done and not source_done:
                confidence = math.exp((await self._peek())[1])
            action = self.policy.decide(PolicyState(read, written, source_done, confidence))
            if action == WRITE and self.pending is not None and self.pending[0] == t.stop_id:
                if source_done:
                    break
                action = READ
            if action == READ:
                if read >= len(s._source_units):
                    await self._wait_for_source(read)
                    continue
                self._read(read)
                read += 1
                continue
            tokens = await self._write()
            if tokens is None:
                continue
            written += 1
            delay = s._unit_word[read - 1] + 1 if read else 0
            self.groups.append((tokens, delay))
            text = t.decode(self.target_ids)
            now = time.monotonic() - s.opened
            self.elapsed.append(now)
            s._pieces.put_nowait(
                TargetPiece(
                    text[len(previous_text) :], tokens, delay, now, self.logprobs[-len(tokens) :]
                )
            )
            previous_text = text
        delays = word_delays(t, self.groups)
        elapsed = word_delays(t, [(g[0], i) for i, g in enumerate(self.groups)])
        return SessionResult(
            text=t.decode(self.target_ids),
            delays=delays,
            elapsed=[self.elapsed[i] for i in elapsed],
            target_ids=self.target_ids,
            logprobs=self.logprobs,
            tokens_sent=s.tokens_sent,
            source_words=s._source_words,
            source_tokens_read=len(self.source_ids),
            tokens_minimum=t.prefix_len
            + t.header_len
            + len(self.source_ids)
            + len(self.target_ids),
            request_ids=list(s.request_ids),
            read_latencies=list(s.read_latencies),
            decode_steps=list(s.decode_steps),
        )
