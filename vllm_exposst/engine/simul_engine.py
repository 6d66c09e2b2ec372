"""The session engine: opens simultaneous translation sessions on one vLLM ``AsyncLLM``."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from collections import OrderedDict
from typing import Any

from ..adapter_meta import adapter_session_settings
from ..options import ExposstOptions, TranslationSettings
from ..precision import dtype_name
from ..prompts import PromptTemplate, build_prompt
from ..switch import SCHEDULER_CLS, apply_env_defaults
from .request import RequestTarget
from .session import Session
from .types import (
    SessionConfig,
    SessionRejected,
    SessionResult,
    SessionTimeout,
    UnknownModelError,
)

TEMPLATES_KEPT = 64  # prompt templates cached (one per language pair and system prompt)


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
        # prompts by (source_lang, target_lang, system_prompt): names clients choose, so
        # the least recently used go once TEMPLATES_KEPT are held
        self._templates: OrderedDict[tuple, PromptTemplate] = OrderedDict()
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

        apply_env_defaults()
        own = {f.name for f in dataclasses.fields(ExposstOptions)} | {"lora_modules"}
        session_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        args = engine_args or AsyncEngineArgs(**kwargs)
        args.scheduler_cls = args.scheduler_cls or SCHEDULER_CLS
        llm = AsyncLLM.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(llm.vllm_config.model_config.tokenizer)
        lora_modules = session_kwargs.pop("lora_modules", None)
        return cls(llm, tokenizer, lora_modules=lora_modules, **session_kwargs)

    @property
    def dtype(self) -> str:
        """The dtype the engine computes in, e.g. ``float32`` (logs, stats, records)."""
        return dtype_name(self.llm.vllm_config.model_config.dtype)

    def session_config(self, **fields: Any) -> SessionConfig:
        """Server options, then the adapter's ``exposst.json``, then ``fields`` (None = unset)."""
        known = {f.name for f in dataclasses.fields(SessionConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown session option(s) {unknown}; known: {sorted(known)}")
        shared = dataclasses.fields(TranslationSettings)
        values: dict[str, Any] = {f.name: getattr(self.options, f.name) for f in shared}
        lora = fields.get("lora")
        if lora is not None:
            self.lora_request(lora)  # an unknown name is an error
            values.update(adapter_session_settings(self._lora[lora].lora_path))
        values.update({k: v for k, v in fields.items() if v is not None})
        return SessionConfig(**values)

    def add_lora(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        self._lora[name] = LoRARequest(name, next(self._lora_ids), str(path))

    def adapters(self) -> dict[str, str]:
        """The LoRA adapters sessions may name: name -> folder."""
        return {name: request.lora_path for name, request in self._lora.items()}

    def lora_request(self, name: str | None) -> Any:
        """vLLM's ``LoRARequest`` for an adapter name (None for the base model)."""
        if name is None:
            return None
        if name not in self._lora:
            raise UnknownModelError(f"unknown LoRA adapter {name!r}; known: {sorted(self._lora)}")
        return self._lora[name]

    def template(self, config: SessionConfig) -> PromptTemplate:
        key = (config.source_lang, config.target_lang, config.system_prompt)
        if key not in self._templates:
            self._templates[key] = build_prompt(
                self.tokenizer,
                config.source_lang,
                config.target_lang,
                system_prompt=config.system_prompt,
            )
            while len(self._templates) > TEMPLATES_KEPT:
                self._templates.popitem(last=False)
        self._templates.move_to_end(key)
        return self._templates[key]

    async def stats(self, request_ids: list[str] | None = None) -> dict:
        """Scheduler counts: sessions, KV blocks, tokens computed per request id (only
        ``request_ids``' when given; else the last few thousand requests').

        With data parallelism (``--data-parallel-size N``) every engine core is asked
        and the counts are summed; ``engines`` then lists each engine's own counts."""
        client = self.llm.engine_core
        args = () if request_ids is None else (list(request_ids),)
        if len(getattr(client, "core_engines", ())) > 1:
            return merge_engine_stats(await client.call_utility_all_async("exposst_stats", *args))
        return await client.call_utility_async("exposst_stats", *args)

    async def tokens_computed(self, request_ids: list[str]) -> int:
        """Tokens the engine really computed for these requests (recomputation included)."""
        counts = (await self.stats(request_ids))["tokens_computed"]
        return sum(counts.get(request_id, 0) for request_id in request_ids)

    async def open(self, config: SessionConfig | None = None, **overrides: Any) -> Session:
        """Admit and start a session, or raise :class:`SessionRejected` (retryable).

        Without ``config`` the settings come from :meth:`session_config`."""
        if config is None:
            config = self.session_config(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        policy = config.validate()
        lora_request = self.lora_request(config.lora)
        template = self.template(config)
        await self._admit()
        try:
            session = Session(
                config,
                policy,
                template,
                RequestTarget(self.llm, lora_request, template.stop_id),
                max_position=self.max_model_len,
                on_end=lambda ended: self.sessions.pop(ended.id, None),
            )
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
        """Close sessions that wait for source and got none for ``idle_timeout`` s (a
        session writing a long turn is busy, not idle, however long the turn takes)."""
        while self.sessions:
            await asyncio.sleep(min(self.idle_timeout, 1.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                waited = now - session.last_activity
                if session.waiting_for_source and waited > self.idle_timeout:
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


def merge_engine_stats(per_engine: list[dict]) -> dict:
    """One view of several engines' ``exposst_stats``: counts summed, tables merged."""
    merged: dict[str, Any] = {"time": max(stats["time"] for stats in per_engine)}
    for key, value in per_engine[0].items():
        if isinstance(value, int) and key != "time":
            merged[key] = sum(stats[key] for stats in per_engine)
    merged["tokens_computed"] = {
        request: count
        for stats in per_engine
        for request, count in stats["tokens_computed"].items()
    }
    merged["engines"] = per_engine
    return merged
