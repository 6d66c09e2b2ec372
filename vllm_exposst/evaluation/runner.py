"""Run a test set through one in-process engine, many sessions at once.

Each (mode, policy) pair is one *run*: every sentence is translated in batch use
(the whole source pushed at once, read word by word under the policy), at most
``concurrency`` sessions open together.  Tokens computed come from the engine's own
counts once the run is over.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..defaults import MODES, OFFLINE
from ..engine import SessionConfig, SessionRejected
from ..policies import parse_policy
from .data import Pair
from .metrics import Hypothesis

_REJECT_BACKOFF = 0.05  # seconds before retrying a session the engine had no room for


@dataclass(frozen=True)
class RunSpec:
    """One session mode under one policy."""

    mode: str
    policy: str

    @property
    def folder(self) -> str:
        """A path-safe name: ``exposst/wait-3``, ``shift/read-2_write-1``."""
        return f"{self.mode}/{re.sub(r'[^A-Za-z0-9.+-]', '_', self.policy)}"

    @property
    def label(self) -> str:
        return self.mode if self.mode == OFFLINE else f"{self.mode} {self.policy}"


@dataclass(frozen=True)
class RunSettings:
    """What every session of an evaluation shares."""

    slot_len: int | None = None  # None: the adapter's, else the engine's default
    lora: str | None = None
    max_target_tokens: int | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    refeed: bool | None = None  # None: the adapter's, else the engine's default
    concurrency: int = 16

    def session(self, engine: Any, spec: RunSpec) -> SessionConfig:
        """Through the engine, so an adapter's ``exposst.json`` fills what is not set."""
        return engine.session_config(
            source_lang=self.source_lang,
            target_lang=self.target_lang,
            policy=spec.policy,
            slot_len=self.slot_len,
            mode=spec.mode,
            lora=self.lora,
            max_target_tokens=self.max_target_tokens,
            refeed=self.refeed,
        )


def parse_policies(spec: str) -> list[str]:
    """``wait-1,3,5`` -> wait-1, wait-3, wait-5; a bare number reuses the previous prefix.

    Any policy spec is allowed (``wait-3,read-2/write-1,adaptive-0.6``); each is checked.
    """
    out: list[str] = []
    prefix = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.isdigit():
            if prefix is None:
                raise ValueError(f"{part!r} in {spec!r} has no policy before it (e.g. wait-1,3)")
            part = prefix + part
        else:
            match = re.fullmatch(r"(.*-)(\d+)", part)
            prefix = match.group(1) if match else None
        parse_policy(part)
        out.append(part)
    if not out:
        raise ValueError(f"no policies in {spec!r}")
    return out


def plan_runs(modes: list[str], policies: list[str]) -> list[RunSpec]:
    """Every mode under every policy; ``offline`` once (it reads everything first)."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    runs = []
    for mode in modes:
        if mode == OFFLINE:
            runs.append(RunSpec(OFFLINE, OFFLINE))
        else:
            runs += [RunSpec(mode, policy) for policy in policies]
    return runs


async def translate_pair(engine, pair: Pair, config: SessionConfig) -> Hypothesis:
    """One sentence in batch use; retries while the engine has no room for a session."""
    while True:
        start = time.perf_counter()
        try:
            result = await engine.translate(pair.source, config=config)
            break
        except SessionRejected:
            await asyncio.sleep(_REJECT_BACKOFF)
    seconds = time.perf_counter() - start
    return Hypothesis(
        index=pair.index,
        source=pair.source,
        reference=pair.reference,
        prediction=result.text,
        delays=list(result.delays),
        elapsed=list(result.elapsed),
        tokens_minimum=result.tokens_minimum,
        refeeds=result.refeeds,
        seconds=seconds,
        request_ids=list(result.request_ids),
    )


async def run_spec(
    engine,
    pairs: list[Pair],
    spec: RunSpec,
    settings: RunSettings,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[Hypothesis], float]:
    """All sentences under one mode and policy; returns hypotheses (file order) and wall s."""
    gate = asyncio.Semaphore(settings.concurrency)
    config = settings.session(engine, spec)

    async def one(pair: Pair) -> Hypothesis:
        async with gate:
            hyp = await translate_pair(engine, pair, config)
        if on_done is not None:
            on_done()
        return hyp

    start = time.perf_counter()
    hyps = await asyncio.gather(*[one(pair) for pair in pairs])
    wall = time.perf_counter() - start
    counts = (await engine.stats())["tokens_computed"]
    for hyp in hyps:
        hyp.tokens_computed = sum(counts.get(r, 0) for r in hyp.request_ids)
    return list(hyps), wall
