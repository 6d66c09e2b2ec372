"""One vLLM streaming-input request: chunks of tokens in, sampled tokens out, turn by turn."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..positions import EXTRA_KEY
from .types import SessionTooLong, TurnStats

Sampled = list[tuple[int, float]]  # (token id, log-probability) per sampled token


@dataclass(frozen=True)
class RequestTarget:
    """Where a session's requests go: the engine client, its adapter and its stop token."""

    llm: Any  # vLLM AsyncLLM (or any engine client with generate/abort)
    lora_request: Any  # vllm LoRARequest or None
    stop_id: int


@dataclass(frozen=True)
class QueuedChunk:
    """A chunk sent behind the running turn (a queued READ; the engine completes it)."""

    tokens: list[int]
    max_tokens: int
    extra: dict


class StreamRequest:
    """A streaming-input request whose KV cache the engine keeps between turns."""

    def __init__(
        self, target: RequestTarget, session_id: str, stats: TurnStats, salt: str | None
    ) -> None:
        self.target, self.stats, self.salt = target, stats, salt
        self.request_id = f"{session_id}-{uuid.uuid4().hex[:6]}"
        stats.request_ids.append(self.request_id)
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.num_tokens = 0  # tokens the engine holds for this request (physical count)
        self.outputs: Any = None
        self.finished = False
        self.early: Sampled = []  # the next turn's tokens, merged into this turn's output
        self.early_ended = False  # ... and that turn's end with them
        self.cache_counted = False  # vLLM reports the prompt's prefix-cache hits once

    async def _stream(self) -> AsyncIterator[Any]:
        while True:
            item = await self.inputs.get()
            if item is None:
                return
            yield item

    def _chunk(
        self, tokens: list[int], max_tokens: int, min_tokens: int, extra: dict, first: bool
    ) -> Any:
        """One streaming input: ``tokens`` fed, then up to ``max_tokens`` sampled."""
        from vllm import SamplingParams
        from vllm.engine.protocol import StreamingInput
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            logprobs=0,
            ignore_eos=True,
            stop_token_ids=[self.target.stop_id],
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            extra_args={EXTRA_KEY: extra},
        )
        prompt = TokensPrompt(prompt_token_ids=list(tokens))
        if first and self.salt:
            prompt["cache_salt"] = self.salt
        return StreamingInput(prompt=prompt, sampling_params=params)

    def _queued(self, queue: QueuedChunk) -> Any:
        return self._chunk(queue.tokens, queue.max_tokens, 0, queue.extra, first=False)

    def room(self, tokens: int) -> int:
        """Tokens a turn feeding ``tokens`` may still sample (``max_model_len`` bound)."""
        return self.target.llm.vllm_config.model_config.max_model_len - self.num_tokens - tokens

    async def turn(
        self,
        tokens: list[int],
        *,
        max_tokens: int,
        extra: dict,
        min_tokens: int = 0,
        source_tokens: int = 0,
        on_sampled: Callable[[Sampled], None] | None = None,
        queue: QueuedChunk | None = None,
        turn_length: Callable[[Sampled], int | None] | None = None,
    ) -> Sampled:
        """Send ``tokens`` as the next chunk and collect the turn's sampled tokens.

        ``on_sampled`` sees the tokens sampled so far after each engine output, so a
        caller can pass on words before a long turn ends.  A request never holds more
        than ``max_model_len`` tokens (refeed copies count, positions aside; vLLM would
        fail the whole engine on it): the turn samples at most what is left, and a turn
        with no room left is refused with :class:`SessionTooLong`.

        ``queue`` is a queued READ sent right behind this chunk (the engine runs it
        when this turn ends; :meth:`collect_queued` takes its output).  vLLM merges
        outputs a slow reader has not taken, so then ``turn_length`` says where this
        turn ends within its sampled tokens, once it can tell."""
        room = self.room(len(tokens))
        if room < 1:
            limit = self.target.llm.vllm_config.model_config.max_model_len
            raise SessionTooLong(
                f"the session would hold more than {limit} tokens (max_model_len): "
                f"{self.num_tokens} held, {len(tokens)} more to feed"
            )
        max_tokens = min(max_tokens, room)
        min_tokens = min(min_tokens, max_tokens)
        sent_at = time.perf_counter()
        chunk = self._chunk(tokens, max_tokens, min_tokens, extra, self.outputs is None)
        await self.inputs.put(chunk)
        if queue is not None:
            await self.inputs.put(self._queued(queue))
        if self.outputs is None:
            self.outputs = self.target.llm.generate(
                self._stream(),
                chunk.sampling_params,
                self.request_id,
                lora_request=self.target.lora_request,
            ).__aiter__()
        return await self._collect(len(tokens), sent_at, source_tokens, on_sampled, turn_length)

    async def collect_queued(
        self,
        tokens: int,
        *,
        source_tokens: int,
        on_sampled: Callable[[Sampled], None] | None = None,
        queue: QueuedChunk | None = None,
        turn_length: Callable[[Sampled], int | None] | None = None,
    ) -> Sampled:
        """The turn of the queued READ (``tokens`` fed, the engine's completion
        included), with ``queue`` and ``turn_length`` as in :meth:`turn`.  Its
        READ-to-WRITE latency counts from now: the moment the turn before came back,
        when the chunk would otherwise have been sent."""
        sent_at = time.perf_counter()
        if queue is not None:
            await self.inputs.put(self._queued(queue))
        return await self._collect(tokens, sent_at, source_tokens, on_sampled, turn_length)

    async def _collect(
        self,
        tokens: int,
        sent_at: float,
        source_tokens: int,
        on_sampled: Callable[[Sampled], None] | None,
        turn_length: Callable[[Sampled], int | None] | None,
    ) -> Sampled:
        sampled: Sampled = list(self.early)
        ended, self.early, self.early_ended = self.early_ended, [], False
        first_at = time.perf_counter() if sampled else None
        while not ended:
            output = await self.outputs.__anext__()
            first_at = first_at or time.perf_counter()
            completion = output.outputs[0]
            if not self.cache_counted and output.num_cached_tokens is not None:
                self.cache_counted = True
                self.stats.tokens_cached += output.num_cached_tokens
            for i, token in enumerate(completion.token_ids):
                logprob = completion.logprobs[i][token].logprob if completion.logprobs else 0.0
                sampled.append((token, logprob))
            ended = completion.finish_reason is not None or output.finished
            length = turn_length(sampled) if turn_length is not None else None
            if length is not None and length < len(sampled):  # the next turn's, merged in
                self.early, self.early_ended = sampled[length:], ended
                sampled, ended = sampled[:length], True
                self.stats.merged_turns += 1
            if on_sampled is not None and completion.token_ids:
                on_sampled(sampled)
        finished_at = time.perf_counter()
        if source_tokens:
            self.stats.read_latencies.append(first_at - sent_at)
        if len(sampled) > 1:  # the tokens after a turn's first come one decode step apart
            self.stats.decode_steps.append((finished_at - first_at) / (len(sampled) - 1))
        computed = tokens + len(sampled) - 1  # the last sampled token is not fed
        self.num_tokens += computed
        self.stats.tokens_sent += computed
        self.stats.turns += 1
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
            await self.target.llm.abort(self.request_id)
