"""Sessions stay exact under chunked prefill, preemption and prefix caching.

One engine with a tiny token budget per step (prefills split across steps), a KV
cache too small for all sessions at once (vLLM preempts and recomputes), and prefix
caching on with a system prompt longer than one KV block, so sessions share it.
"""

from __future__ import annotations

import asyncio

import pytest

from vllm_exposst import models
from vllm_exposst.engine import SessionConfig

from ..conftest import start_engine
from .test_engine import LONG_SYSTEM_PROMPT, assert_matches_reference, jobs, template_for

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def stressed(engine_loop, model_cache):
    path = models.tiny_model("llama", model_cache)
    engine = start_engine(
        engine_loop,
        path,
        max_model_len=1024,
        max_num_seqs=16,
        max_num_batched_tokens=32,  # chunked prefill: long chunks take several steps
        num_gpu_blocks_override=20,  # 20 x 128 tokens: 16 sessions need about 32
        enable_prefix_caching=True,
        session_max_tokens=1,  # admit everything: vLLM must preempt instead
    )
    model, tokenizer = models.load(path)
    yield engine, model, tokenizer
    engine.shutdown()


def test_exact_under_chunked_prefill_preemption_and_prefix_caching(stressed, engine_loop):
    engine, model, tokenizer = stressed
    batch = jobs(seed=21, count=14, system_prompt=LONG_SYSTEM_PROMPT)
    twin = batch[0][0], SessionConfig(**{**batch[0][1].__dict__})
    batch += [twin, (batch[1][0], SessionConfig(**{**batch[1][1].__dict__}))]

    async def go():
        return await asyncio.gather(*[engine.translate(s, config=c) for s, c in batch])

    results = engine_loop.run(go(), timeout=600)
    template = template_for(tokenizer, batch[0][1])
    assert template.prefix_len > 128  # the shared prefix fills a whole KV block
    for job, result in zip(batch, results):
        assert_matches_reference(model, template, job, result)
    assert results[0].target_ids == results[-2].target_ids  # identical twins

    counts = engine_loop.run(engine.stats())["tokens_computed"]
    computed = [counts[r.request_ids[0]] for r in results]
    sent = [r.tokens_sent for r in results]
    # preemption made vLLM recompute some sessions: more computed than sent
    assert any(c > s for c, s in zip(computed, sent)), (computed, sent)

    # the same session again finds the shared prefix block in the cache. Under
    # preemption the batch's last sessions may evict it from the 20 blocks, so one run
    # alone puts it back first; the run after it must reuse it, and stay exact.
    for _ in range(2):
        again = engine_loop.run(engine.translate(twin[0], config=twin[1]))
        assert_matches_reference(model, template, twin, again)
    hit = engine_loop.run(engine.tokens_computed(again.request_ids))
    assert again.tokens_sent - hit >= 128, (hit, again.tokens_sent)
    stats = engine_loop.run(engine.stats())
    assert stats["active_sessions"] == stats["waiting_sessions"] == 0
    assert stats["free_blocks"] == stats["total_blocks"]
