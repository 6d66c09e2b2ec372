"""The vLLM integration: real engine, tiny models, float32, eager.

Every session is checked against the transformers reference decoder run on the
same checkpoint with the same policy, slot length and target cap.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from vllm_exposst import models
from vllm_exposst.engine import SessionConfig, SessionError, SessionRejected, SimulEngine
from vllm_exposst.layout import READ, WRITE
from vllm_exposst.models import ENGLISH_WORDS
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from ..conftest import (
    ATTENTION,
    EVERY_PROJECTION,
    make_random_adapter,
    peft_model,
    random_sentence,
    start_engine,
)

pytestmark = pytest.mark.engine
CAP = 24
POLICIES = ["wait-1", "wait-3", "wait-5", "read-2/write-1", "adaptive-0.05", "token-wait-3"]
COUNT_DECIDED = {"wait-1", "wait-3", "wait-5", "read-2/write-1"}  # no confidence needed
LONG_SYSTEM_PROMPT = " ".join(["You translate captions for a live audience, word by word."] * 12)


def jobs(seed: int, count: int = 16, cap: int = CAP, **config) -> list[tuple[str, SessionConfig]]:
    """Mixed policies and lengths; slot lengths from 2 so first READs overflow a slot."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        source = random_sentence(rng, ENGLISH_WORDS, 2, 14)
        policy = POLICIES[i % len(POLICIES)]
        out.append(
            (
                source,
                SessionConfig(
                    policy=policy, slot_len=rng.randint(2, 6), max_target_tokens=cap, **config
                ),
            )
        )
    return out


def reference(model, template, source: str, config: SessionConfig):
    """The transformers oracle; offline is the recompute decoder reading everything first."""
    offline = config.mode == "offline"
    decoder = ReferenceDecoder(
        model,
        template,
        mode="recompute" if offline else config.mode,
        slot_len=config.slot_len,
        max_target_tokens=config.max_target_tokens,
        max_word_tokens=config.max_word_tokens,
        refeed=config.refeed,
    )
    return decoder.translate(source, "offline" if offline else config.policy)


def assert_matches_reference(model, template, job, result):
    source, config = job
    ref = reference(model, template, source, config)
    assert result.target_ids == ref.target_ids, (source, config)
    assert result.delays == ref.delays
    diff = max((abs(a - b) for a, b in zip(result.logprobs, ref.logprobs)), default=0.0)
    assert diff <= 1e-4, (source, config.policy, diff)


def run_all(loop, engine: SimulEngine, batch):
    async def go():
        return await asyncio.gather(
            *[engine.translate(source, config=config) for source, config in batch]
        )

    return loop.run(go())


def template_for(tokenizer, config: SessionConfig):
    return build_prompt(
        tokenizer, config.source_lang, config.target_lang, system_prompt=config.system_prompt
    )


@pytest.fixture(scope="module", params=models.TINY_ARCHS)
def served(request, engine_loop, model_cache):
    """An engine per architecture (LoRA on for Llama), and the same checkpoint in transformers."""
    path = models.tiny_model(request.param, model_cache)
    extra = {}
    if request.param == "llama":
        extra = dict(enable_lora=True, max_lora_rank=8, max_loras=2)
    engine = start_engine(engine_loop, path, **extra)
    model, tokenizer = models.load(path)
    yield request.param, engine, model, tokenizer, path
    engine.shutdown()


def test_sixteen_concurrent_sessions_equal_the_reference_decoder(served, engine_loop):
    _, engine, model, tokenizer, _ = served
    batch = jobs(seed=11)
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    for job, result in zip(batch, results):
        assert_matches_reference(model, template, job, result)
    # the words written between two READs are one engine turn, so turns without new
    # source are at most the tail (confidence and token policies still turn per unit)
    counted = [(job, r) for job, r in zip(batch, results) if job[1].policy in COUNT_DECIDED]
    for (_, config), result in counted:
        assert result.turns - len(result.read_latencies) <= 1, (config.policy, result.turns)
    assert sum(len(r.delays) - r.turns for _, r in counted) > 0  # fewer turns than words


def test_tokens_computed_are_prefix_header_source_and_target(served, engine_loop):
    _, engine, model, tokenizer, _ = served
    batch = jobs(seed=12, count=8)
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    counts = engine_loop.run(engine.stats())["tokens_computed"]
    for (source, config), result in zip(batch, results):
        (request_id,) = result.request_ids
        source_tokens = sum(len(w) for w in template.words_ids(source))
        # a session cut at the target cap may stop before the end of the source
        assert result.source_tokens_read == source_tokens or len(result.target_ids) == CAP
        minimum = template.prefix_len + template.header_len + result.source_tokens_read
        minimum += len(result.target_ids)
        # a token-level session cut at the cap never needs its last written token
        unsent = int(config.policy.startswith("token") and len(result.target_ids) == CAP)
        # the refeed rule's copies, as the reference decoder feeds them
        copies = sum(kind == "F" for kind, _ in reference(model, template, source, config).events)
        assert result.refeeds == copies, config.policy
        assert result.tokens_sent == minimum + copies - unsent, config.policy
        # what vLLM's prefix cache held was not computed: whole blocks of the prompt
        assert counts[request_id] == result.tokens_sent - result.tokens_cached, config.policy
        assert result.tokens_cached in cacheable_prompt_tokens(engine, template)


def cacheable_prompt_tokens(engine, template) -> set[int]:
    """The prefix-cache hits a session may report: none, or the whole KV blocks of its
    prompt prefix (sessions of one configuration share those)."""
    blocks = template.prefix_len // engine.block_size
    return {blocks * engine.block_size, 0}


def test_a_second_session_reuses_the_prompt_prefix_from_the_cache(served, engine_loop):
    """On the CPU ExPosST engines use 32-token KV blocks (patch/engine_args.py), so the
    prompt prefix fills one and a later session of the same configuration skips it."""
    _, engine, model, tokenizer, _ = served
    assert engine.block_size == 32
    (job,) = jobs(seed=14, count=1)
    template = template_for(tokenizer, job[1])
    assert template.prefix_len >= engine.block_size
    first, second = (run_all(engine_loop, engine, [job])[0] for _ in range(2))
    for result in (first, second):
        assert_matches_reference(model, template, job, result)
    cached = (template.prefix_len // engine.block_size) * engine.block_size
    assert second.tokens_cached == cached > 0
    counts = engine_loop.run(engine.stats())["tokens_computed"]
    (request_id,) = second.request_ids
    assert counts[request_id] == second.tokens_sent - cached


def test_the_first_rule_stays_selectable_and_computes_each_token_once(served, engine_loop):
    """refeed off: the contract's first layout, equal to the reference decoder, no copies."""
    _, engine, model, tokenizer, _ = served
    batch = jobs(seed=13, count=8, refeed=False)
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    counts = engine_loop.run(engine.stats())["tokens_computed"]
    for job, result in zip(batch, results):
        assert_matches_reference(model, template, job, result)
        source, config = job
        minimum = template.prefix_len + template.header_len + result.source_tokens_read
        minimum += len(result.target_ids)
        unsent = int(config.policy.startswith("token") and len(result.target_ids) == CAP)
        assert result.refeeds == 0
        assert result.tokens_sent == minimum - unsent, config.policy
        assert counts[result.request_ids[0]] == minimum - unsent - result.tokens_cached
        assert result.tokens_cached in cacheable_prompt_tokens(engine, template)


def test_baseline_modes_run_in_the_same_engine(served, engine_loop):
    _, engine, model, tokenizer, _ = served
    source = "two people walk near the old house with a big black dog"
    batch = [
        (source, SessionConfig(policy="wait-2", mode=mode, max_target_tokens=CAP))
        for mode in ("shift", "recompute", "offline")
    ]
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    for job, result in zip(batch, results):
        assert_matches_reference(model, template, job, result)
    shift, recompute, _ = results
    assert len(recompute.request_ids) > 1  # restarted after READs
    counts = engine_loop.run(engine.stats())["tokens_computed"]
    assert (
        engine_loop.run(engine.tokens_computed(recompute.request_ids))
        > counts[shift.request_ids[0]]
    )


def test_ordinary_requests_are_untouched(served, engine_loop):
    """An ordinary completion beside sessions equals one from an engine without the plugin."""
    _, engine, _, tokenizer, path = served
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    prompt = {"prompt_token_ids": tokenizer.encode("a man walks in the park with")}
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=0, ignore_eos=True)

    async def complete(llm, request_id):
        final = None
        async for output in llm.generate(prompt, params, request_id):
            final = output
        completion = final.outputs[0]
        return completion.token_ids, [
            lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)
        ]

    async def beside_sessions():
        sessions = [
            engine.translate("a dog runs in the park", policy="wait-1", max_target_tokens=CAP)
            for _ in range(3)
        ]
        *_, plain = await asyncio.gather(*sessions, complete(engine.llm, "ordinary-1"))
        return plain

    with_plugin = engine_loop.run(beside_sessions())

    async def without_plugin():
        args = AsyncEngineArgs(
            model=str(path),
            dtype="float32",
            enforce_eager=True,
            max_model_len=1024,
            disable_log_stats=True,
            seed=0,
        )
        llm = AsyncLLM.from_engine_args(args)
        try:
            return await complete(llm, "ordinary-2")
        finally:
            llm.shutdown()

    plain = engine_loop.run(without_plugin())
    assert with_plugin[0] == plain[0]
    assert max(abs(a - b) for a, b in zip(with_plugin[1], plain[1])) <= 1e-4


def test_a_session_passing_the_position_limit_fails_alone(served, engine_loop):
    _, engine, model, tokenizer, _ = served
    batch = jobs(seed=13, count=4)
    # the first slot ends near max_model_len (1024): target positions soon pass it
    doomed = (
        "a man walks in the park",
        SessionConfig(policy="wait-1", slot_len=990, max_target_tokens=64),
    )

    async def go():
        return await asyncio.gather(
            *[engine.translate(s, config=c) for s, c in [doomed, *batch]],
            return_exceptions=True,
        )

    failure, *results = engine_loop.run(go())
    assert isinstance(failure, SessionError) and "1024" in str(failure)
    template = template_for(tokenizer, batch[0][1])
    for job, result in zip(batch, results):
        assert_matches_reference(model, template, job, result)
    stats = engine_loop.run(engine.stats())
    assert stats["free_blocks"] == stats["total_blocks"]


def test_admission_rejects_with_a_retryable_error_and_frees_everything(served, engine_loop):
    _, engine, _, tokenizer, _ = served
    start = engine_loop.run(engine.stats())["free_blocks"]
    one_slot = SimulEngine(engine.llm, tokenizer, max_sessions=1)
    tiny_cache = SimulEngine(engine.llm, tokenizer, session_max_tokens=10**9)

    async def go():
        first = await one_slot.open(policy="wait-1")
        with pytest.raises(SessionRejected, match="retry"):
            await one_slot.open(policy="wait-1")
        with pytest.raises(SessionRejected, match="KV cache"):
            await tiny_cache.open(policy="wait-1")
        await first.close()
        again = await one_slot.open(policy="wait-1")  # room again after close
        await again.close()

    engine_loop.run(go())
    assert engine_loop.run(engine.stats())["free_blocks"] == start


def test_abort_and_idle_timeout_free_every_block(served, engine_loop):
    _, engine, _, tokenizer, _ = served
    start = engine_loop.run(engine.stats())["free_blocks"]
    idle = SimulEngine(engine.llm, tokenizer, idle_timeout=1.0)

    async def go():
        session = await engine.open(policy="wait-1", max_target_tokens=CAP)
        await session.push("a man walks in the park ")
        first = await session.__aiter__().__anext__()
        assert first.text and first.source_words_read == 1
        held = (await engine.stats())["free_blocks"]
        await session.abort()
        with pytest.raises(SessionError):
            await session.result()
        sleepy = await idle.open(policy="wait-1", max_target_tokens=CAP)
        await sleepy.push("two dogs play ")
        await sleepy.__aiter__().__anext__()
        await asyncio.sleep(3.0)
        with pytest.raises(SessionError, match="idle"):
            await sleepy.result()
        return held

    held = engine_loop.run(go())
    assert held < start
    assert engine_loop.run(engine.stats())["free_blocks"] == start


def add_two_adapters(engine, model, path, folder) -> dict:
    """Random adapters "adapter-a" (attention only: its MLP slots are zero) and
    "adapter-b" (every projection: gate_up's two slices, down) loaded into ``engine``;
    the PEFT model of each, and ``model`` for no adapter (key None)."""
    oracles = {None: model}
    for seed, (name, modules) in enumerate(
        [("adapter-a", ATTENTION), ("adapter-b", EVERY_PROJECTION)], 1
    ):
        adapter = make_random_adapter(path, folder / name, seed=seed, modules=modules)
        engine.add_lora(name, str(adapter))
        oracles[name] = peft_model(path, adapter)
    return oracles


@pytest.mark.parametrize("served", ["llama"], indirect=True)  # the engine with LoRA on
def test_lora_sessions_equal_transformers_with_peft(served, engine_loop, tmp_path_factory):
    """Two adapters and plain sessions in one batch: each equals its own PEFT model."""
    _, engine, model, tokenizer, path = served
    oracles = add_two_adapters(engine, model, path, tmp_path_factory.mktemp("adapters"))
    batch = jobs(seed=14, count=12)
    for i, (_, config) in enumerate(batch):
        config.lora = [None, "adapter-a", "adapter-b"][i % 3]
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    changed = 0
    for job, result in zip(batch, results):
        assert_matches_reference(oracles[job[1].lora], template, job, result)
        if job[1].lora:
            plain = reference(model, template, *job)
            changed += plain.target_ids != result.target_ids
    assert changed > 0  # the adapters really change the output


@pytest.mark.parametrize("served", ["llama"], indirect=True)  # the engine with LoRA on
def test_one_adapter_for_every_session_equals_transformers_with_peft(
    served, engine_loop, tmp_path_factory
):
    """Every session on one adapter (the grouped LoRA ops' single-matmul path) equals PEFT."""
    _, engine, model, tokenizer, path = served
    folder = tmp_path_factory.mktemp("adapters")
    adapter = make_random_adapter(path, folder / "solo", seed=5, modules=EVERY_PROJECTION)
    engine.add_lora("adapter-solo", str(adapter))
    oracle = peft_model(path, adapter)
    batch = jobs(seed=15, count=8)
    for _, config in batch:
        config.lora = "adapter-solo"
    results = run_all(engine_loop, engine, batch)
    template = template_for(tokenizer, batch[0][1])
    for job, result in zip(batch, results):
        assert_matches_reference(oracle, template, job, result)
    assert any(
        reference(model, template, *job).target_ids != r.target_ids
        for job, r in zip(batch, results)
    )  # the adapter really changes the output


def test_word_by_word_driving_with_wait_idle(served, engine_loop):
    """A SimulEval-style driver: push one word, wait until the session needs more,
    take what it wrote; every piece's delay is the number of words pushed."""
    _, engine, model, tokenizer, _ = served
    source = "a man walks in the red park with two dogs"
    config = SessionConfig(policy="wait-2", slot_len=3, max_target_tokens=CAP)

    async def drive():
        session = await engine.open(config)
        seen = []
        for pushed, word in enumerate(source.split(), 1):
            await session.push(word + " ")
            await session.wait_idle()
            assert session.waiting_for_source != session.ended  # a cap may end it early
            seen += [(piece.source_words_read, pushed) for piece in session.pending_pieces()]
        await session.finish()
        await session.wait_idle()
        seen += [(p.source_words_read, None) for p in session.pending_pieces()]
        result = await session.result()
        await session.close()
        return seen, result

    seen, result = engine_loop.run(drive())
    assert all(read == pushed for read, pushed in seen if pushed is not None)
    assert_matches_reference(model, template_for(tokenizer, config), (source, config), result)


def ran_ahead_of_the_source(events) -> bool:
    """Did a decode reach the target length limit (twice the source read + 16) with
    source still unread, so that the limit, not the policy, made it read?"""
    read = target = 0
    for kind, count in events:
        if kind == READ:
            read += count
        elif kind == WRITE:
            target += count
            if target >= 2 * read + 16:
                return True
    return False


def test_a_slow_speaker_gets_the_translation_the_whole_source_gets(served, engine_loop):
    """Without a cap the target length limit counts the source read, not the source
    received: a speaker who sends one word and waits for its translation each time
    (the translation running ahead of them) gets exactly what the reference decoder,
    which holds the whole sentence, writes, and the sentence does not end early."""
    _, engine, model, tokenizer, _ = served
    rng = random.Random(11)
    batch = [
        (random_sentence(rng, ENGLISH_WORDS, 8, 14), SessionConfig(policy=p, slot_len=3))
        for p in ["wait-1", "wait-1", "wait-2", "token-wait-1", "adaptive-0.05", "wait-1"]
    ]

    async def drive(source: str, config: SessionConfig):
        session = await engine.open(config)
        for word in source.split():
            await session.push(word + " ")
            await session.wait_idle()
            assert not session.ended, "the sentence ended before its source did"
        await session.finish()
        result = await session.result()
        await session.close()
        return result

    template = template_for(tokenizer, batch[0][1])
    limited = 0
    for job in batch:
        result = engine_loop.run(drive(*job))
        assert_matches_reference(model, template, job, result)
        limited += ran_ahead_of_the_source(reference(model, template, *job).events)
    assert limited >= 2  # the limit made these decodes read, in the oracle's own events


def test_pieces_join_to_the_reference_text_without_half_characters(served, engine_loop):
    """The tiny models write lone bytes of ü, emoji, CJK...: a piece that ends inside a
    character holds it back (empty text, its tokens kept), the last piece flushes."""
    _, engine, model, tokenizer, _ = served
    rng = random.Random(3)
    batch = [
        (
            random_sentence(rng, ENGLISH_WORDS, 2, 14),
            SessionConfig(policy=policy, slot_len=3, max_target_tokens=CAP),
        )
        for policy in ("token-wait-3", "wait-3")
        for _ in range(15)
    ]

    async def one(source, config):
        session = await engine.open(config)
        try:
            await session.push(source)
            await session.finish()
            pieces = [piece async for piece in session]
            return pieces, await session.result()
        finally:
            await session.close()

    async def go():
        return await asyncio.gather(*[one(source, config) for source, config in batch])

    held_back = 0
    template = template_for(tokenizer, batch[0][1])
    for job, (pieces, result) in zip(batch, engine_loop.run(go())):
        assert_matches_reference(model, template, job, result)
        ref = reference(model, template, *job)
        assert "".join(piece.text for piece in pieces) == result.text == ref.text
        assert [t for piece in pieces for t in piece.token_ids] == result.target_ids
        assert not any(piece.text.endswith("\ufffd") for piece in pieces[:-1])
        held_back += sum(bool(piece.token_ids) and not piece.text for piece in pieces)
    assert held_back > 0  # the case under test happened
