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

    async def _stream(self) -> AsyncIterator[Any]:
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
        on_sampled: Callable[[Sampled], None] | None = None,
    ) -> Sampled:
        """Send ``tokens`` as the next chunk and collect the turn's sampled tokens.

        ``on_sampled`` sees the tokens sampled so far after each engine output, so a
        caller can pass on words before a long turn ends.  A request never holds more
        than ``max_model_len`` tokens (refeed copies count, positions aside; vLLM would
        fail the whole engine on it): the turn samples at most what is left, and a turn
        with no room left is refused with :class:`SessionTooLong`."""
        limit = self.target.llm.vllm_config.model_config.max_model_len
        room = limit - self.num_tokens - len(tokens)
        if room < 1:
            raise SessionTooLong(
                f"the session would hold more than {limit} tokens (max_model_len): "
                f"{self.num_tokens} held, {len(tokens)} more to feed"
            )
        max_tokens = min(max_tokens, room)
        min_tokens = min(min_tokens, max_tokens)
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
        if self.outputs is None and self.salt:
            prompt["cache_salt"] = self.salt
        sent_at = time.perf_counter()
        await self.inputs.put(StreamingInput(prompt=prompt, sampling_params=params))
        if self.outputs is None:
            self.outputs = self.target.llm.generate(
                self._stream(), params, self.request_id, lora_request=self.target.lora_request
            ).__aiter__()
        sampled: Sampled = []
        first_at = None
        while True:
            output = await self.outputs.__anext__()
            first_at = first_at or time.perf_counter()
            completion = output.outputs[0]
            for i, token in enumerate(completion.token_ids):
                logprob = completion.logprobs[i][token].logprob if completion.logprobs else 0.0
                sampled.append((token, logprob))
            if on_sampled is not None and completion.token_ids:
                on_sampled(sampled)
            if completion.finish_reason is not None or output.finished:
                break
        finished_at = time.perf_counter()
        if source_tokens:
            self.stats.read_latencies.append(first_at - sent_at)
        if len(sampled) > 1:  # the tokens after a turn's first come one decode step apart
            self.stats.decode_steps.append((finished_at - first_at) / (len(sampled) - 1))
        computed = len(tokens) + len(sampled) - 1  # the last sampled token is not fed
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
