"""Queued READs (vllm_exposst/queued_read.py): a READ chunk whose source has arrived is
sent behind the running WRITE turn and completed by the engine's scheduler.

The claim is that this changes when a chunk runs, never what is computed: every
session equals the transformers reference decoder and the same session without
queueing, token counts included; a turn that ends on the stop token drops its queued
READ; and outputs vLLM merges for a slow reader are split back into turns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest

from vllm_exposst import models
from vllm_exposst.engine import SessionConfig
from vllm_exposst.models import ENGLISH_WORDS

from ..conftest import random_sentence, start_engine
from .test_engine import assert_matches_reference, run_all, template_for

pytestmark = pytest.mark.engine
POLICIES = ["wait-1", "wait-3", "read-2/write-1", "wait-2"]


def batch(seed: int, count: int = 12, **config) -> list[tuple[str, SessionConfig]]:
    """Count-decided policies (the ones that queue), long enough sources, short words
    for some sessions (``max_word_tokens`` 2 cuts words, so turns end mid-word)."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        options = dict(policy=POLICIES[i % len(POLICIES)], slot_len=rng.randint(2, 6))
        if i % 3 == 0:
            options["max_word_tokens"] = 2
        jobs.append(
            (random_sentence(rng, ENGLISH_WORDS, 6, 14), SessionConfig(**options, **config))
        )
    return jobs


def stop_prone_copy(path, folder):
    """The tiny checkpoint with the stop token's output row set just above the most
    often chosen token's, so greedy decoding stops early and often, mid-source too."""
    import torch

    model, tokenizer = models.load(path)
    stop = template_for(tokenizer, SessionConfig()).stop_id
    ids = torch.tensor([list(range(10, 200))])
    with torch.no_grad():
        winners = model(input_ids=ids).logits[0].argmax(-1)
        favourite = int(torch.mode(winners).values)
        head = model.get_output_embeddings().weight
        head[stop] = head[favourite] * 1.02
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(engine_loop, model_cache, tmp_path_factory):
    path = models.tiny_model("llama", model_cache)
    engine = start_engine(engine_loop, path)
    model, tokenizer = models.load(path)
    yield engine, model, tokenizer
    engine.shutdown()


def test_queued_reads_equal_the_reference_and_the_unqueued_session(served, engine_loop):
    engine, model, tokenizer = served
    before = engine_loop.run(engine.stats())
    for mode, refeed in (("exposst", True), ("exposst", False), ("shift", True)):
        jobs = batch(seed=21, mode=mode, refeed=refeed)
        queued = run_all(engine_loop, engine, jobs)
        unqueued = [(s, dataclasses.replace(c, queue_reads=False)) for s, c in jobs]
        plain = run_all(engine_loop, engine, unqueued)
        template = template_for(tokenizer, jobs[0][1])
        for job, with_queue, without in zip(jobs, queued, plain):
            assert_matches_reference(model, template, job, with_queue)
            assert with_queue.target_ids == without.target_ids
            assert with_queue.tokens_sent == without.tokens_sent  # nothing computed twice
            assert with_queue.refeeds == without.refeeds
            assert without.queued_reads == 0
        assert sum(r.queued_reads for r in queued) >= len(jobs), mode  # most READs queue
        counts = engine_loop.run(engine.stats())["tokens_computed"]
        for with_queue in queued:  # the engine's own count: the chunks it completed
            cached = with_queue.tokens_cached  # the prompt's blocks the prefix cache held
            assert counts[with_queue.request_ids[0]] == with_queue.tokens_sent - cached
    after = engine_loop.run(engine.stats())
    assert after["queued_reads"] > before["queued_reads"]


def test_outputs_merged_for_a_slow_reader_are_split_into_turns(served, engine_loop):
    """A busy event loop lets vLLM merge a turn's last output with the next turn's
    first: the session must still cut turns where the engine did."""
    engine, model, tokenizer = served
    jobs = batch(seed=22, count=8)

    async def go():
        busy = True

        async def hog():  # blocks the loop, as a server busy with other work would
            while busy:
                time.sleep(0.03)
                await asyncio.sleep(0)

        hogging = asyncio.get_running_loop().create_task(hog())
        try:
            sessions = []
            for source, config in jobs:
                session = await engine.open(config=config)
                await session.push(source)
                await session.finish()
                sessions.append(session)
            results = [await s.result() for s in sessions]
            return results, sum(s.stats.merged_turns for s in sessions)
        finally:
            busy = False
            await hogging

    results, merged = engine_loop.run(go())
    template = template_for(tokenizer, jobs[0][1])
    for job, result in zip(jobs, results):
        assert_matches_reference(model, template, job, result)
    assert merged > 0  # the case this test is about did happen


def test_a_turn_ending_on_the_stop_token_drops_its_queued_read(
    engine_loop, model_cache, tmp_path_factory
):
    path = stop_prone_copy(
        models.tiny_model("llama", model_cache), tmp_path_factory.mktemp("stop-prone")
    )
    engine = start_engine(engine_loop, path)
    try:
        model, tokenizer = models.load(path)
        jobs = batch(seed=23, count=12)
        results = run_all(engine_loop, engine, jobs)
        template = template_for(tokenizer, jobs[0][1])
        for job, result in zip(jobs, results):
            assert_matches_reference(model, template, job, result)
        stats = engine_loop.run(engine.stats())
        assert stats["queued_reads_dropped"] > 0
        assert stats["queued_reads"] == sum(r.queued_reads for r in results)
        assert stats["free_blocks"] == stats["total_blocks"]  # nothing held after the end
    finally:
        engine.shutdown()


def test_reads_queue_when_the_target_budget_is_nearly_spent(served, engine_loop):
    """A tight target budget (``max_target_tokens``, 16-token words): the turn after a
    queued READ gets what is left, as the session would give it, so READs still queue
    late in a sentence, and the translation equals the reference and the unqueued one."""
    engine, model, tokenizer = served
    jobs = batch(seed=5, count=8, mode="exposst", refeed=True, max_target_tokens=24)
    jobs = [(s, dataclasses.replace(c, max_word_tokens=16)) for s, c in jobs]
    queued = run_all(engine_loop, engine, jobs)
    plain = run_all(
        engine_loop, engine, [(s, dataclasses.replace(c, queue_reads=False)) for s, c in jobs]
    )
    template = template_for(tokenizer, jobs[0][1])
    for job, with_queue, without in zip(jobs, queued, plain):
        assert_matches_reference(model, template, job, with_queue)
        assert with_queue.target_ids == without.target_ids
        assert with_queue.tokens_sent == without.tokens_sent
    # a READ before a turn of words queues only if the budget is set from what is left
    # (24 < 2 x 16); one before the tail queued already
    assert sum(r.queued_reads for r in queued) > len(jobs)  # more than one (tail) READ each


def test_source_arriving_during_a_turn_with_a_queued_read(served, engine_loop):
    """Live speakers whose words arrive while a turn with a READ queued behind it runs.

    The default target limit grows with the source that has arrived (twice its tokens
    + 16), and with 16-token words the limit, not the word cap, sets a turn's budget.
    The turn after a queued READ must run with the budget the READ was queued with (the
    engine already set it), not one recomputed from the grown source: the session once
    failed there with "a queued READ differs from the session's chunk" (40 speakers on
    the server).  Every session must finish, READs must have queued, and the engine's
    token count must equal what the sessions sent."""
    engine, _, _ = served
    rng = random.Random(31)
    jobs = [
        (
            random_sentence(rng, ENGLISH_WORDS, 10, 16),
            SessionConfig(policy=POLICIES[i % 2], slot_len=4, max_word_tokens=16),
        )
        for i in range(16)
    ]

    async def speak(source: str, config: SessionConfig, seed: int):
        words, pause = source.split(), random.Random(seed)
        session = await engine.open(config=config)
        try:
            await session.push(" ".join(words[:3]) + " ")
            for word in words[3:]:  # the rest while turns run: 1-6 ms apart
                await asyncio.sleep(pause.uniform(0.001, 0.006))
                await session.push(word + " ")
            await session.finish()
            return await session.result()
        finally:
            await session.close()

    async def go():
        return await asyncio.gather(*[speak(s, c, i) for i, (s, c) in enumerate(jobs)])

    results = engine_loop.run(go())
    assert all(r.target_ids for r in results)
    assert sum(r.queued_reads for r in results) > len(jobs)
    counts = engine_loop.run(engine.stats())["tokens_computed"]
    for result in results:
        assert counts[result.request_ids[0]] == result.tokens_sent - result.tokens_cached
