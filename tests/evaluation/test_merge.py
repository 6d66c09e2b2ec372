"""exposst-merge: the merged checkpoint gives the tokens of base + LoRA; it keeps exposst.json."""

from __future__ import annotations

import json
import random

import pytest

from vllm_exposst import models
from vllm_exposst.adapter_meta import read_adapter_meta, write_adapter_meta
from vllm_exposst.merge import main as merge_main
from vllm_exposst.merge import merge_adapter
from vllm_exposst.models import ENGLISH_WORDS
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from ..conftest import make_random_adapter, peft_model, random_sentence, start_engine

POLICIES = ["wait-1", "wait-3", "read-2/write-1", "offline"]
META = {"layout": "exposst", "inference_policy": "wait-2", "slot_len": 5, "refeed": True}


@pytest.fixture(scope="module")
def merged(model_cache, tmp_path_factory):
    """(base path, adapter folder, merged folder) for a random adapter on tiny Llama."""
    base = models.tiny_model("llama", model_cache)
    folder = tmp_path_factory.mktemp("merge")
    adapter = make_random_adapter(base, folder / "adapter", seed=7)
    write_adapter_meta(adapter, META)
    return base, adapter, merge_adapter(adapter, folder / "merged", str(base))


def sentences(count: int = 8) -> list[str]:
    rng = random.Random(3)
    return [random_sentence(rng, ENGLISH_WORDS, 2, 12) for _ in range(count)]


def test_merged_model_equals_base_plus_lora_in_transformers(merged):
    """Reference decoder: merged weights vs PEFT's base + adapter, token for token."""
    base, adapter, out = merged
    lora = peft_model(base, adapter)
    plain, tokenizer = models.load(base)
    model, _ = models.load(out)
    template = build_prompt(tokenizer)
    changed = 0
    for i, source in enumerate(sentences()):
        policy = POLICIES[i % len(POLICIES)]
        mode = "recompute" if policy == "offline" else "exposst"
        decode = {"mode": mode, "slot_len": 5, "max_target_tokens": 24, "record_logprobs": True}
        want = ReferenceDecoder(lora, template, **decode).translate(source, policy)
        got = ReferenceDecoder(model, template, **decode).translate(source, policy)
        assert got.target_ids == want.target_ids, (source, policy)
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
        base_run = ReferenceDecoder(plain, template, **decode).translate(source, policy)
        changed += base_run.target_ids != want.target_ids
    assert changed > 0  # the adapter really changes the output, so equality means something


def test_merge_writes_a_float32_checkpoint_with_the_adapters_record(merged):
    base, adapter, out = merged
    config = json.loads((out / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "float32"
    assert list(out.glob("*.safetensors")) and (out / "tokenizer_config.json").exists()
    meta = read_adapter_meta(out)
    assert {k: meta[k] for k in META} == META
    assert meta["merged"]["adapter"] == str(adapter.resolve())
    assert not (out / "adapter_config.json").exists()  # a plain checkpoint, not an adapter


def test_merge_cli_refuses_a_non_empty_output(merged, capsys):
    base, adapter, out = merged
    assert merge_main([str(adapter), "-o", str(out), "--model", str(base)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert merge_main([str(base), "-o", str(out.parent / "x"), "--model", str(base)]) == 2


@pytest.mark.engine
def test_merged_model_in_vllm_equals_base_plus_lora_and_takes_its_settings(merged, engine_loop):
    """vLLM: the merged checkpoint (exposst.json as server defaults) vs base + LoRA request."""
    base, adapter, out = merged
    jobs = sentences(6)

    def run(engine, lora):
        config = engine.session_config(lora=lora, max_target_tokens=24)

        async def all_of():
            import asyncio

            return await asyncio.gather(*[engine.translate(s, config=config) for s in jobs])

        return config, engine_loop.run(all_of())

    lora_engine = start_engine(
        engine_loop, base, enable_lora=True, max_lora_rank=8, max_loras=1,
        lora_modules={"ende": str(adapter)},
    )  # fmt: skip
    try:
        want_config, want = run(lora_engine, "ende")
    finally:
        engine_loop.run(_stop(lora_engine))
    merged_engine = start_engine(engine_loop, out, dtype="auto")
    try:
        got_config, got = run(merged_engine, None)
        assert merged_engine.dtype == "float32"  # auto on the CPU: the platform's
    finally:
        engine_loop.run(_stop(merged_engine))
    assert (got_config.policy, got_config.slot_len) == ("wait-2", 5)  # from out/exposst.json
    assert got_config == want_config.__class__(**{**vars(want_config), "lora": None})
    for w, g in zip(want, got, strict=True):
        assert g.target_ids == w.target_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


async def _stop(engine) -> None:
    engine.shutdown()


def test_the_cached_merge_follows_the_adapter_when_it_is_retrained_in_place(
    model_cache, tmp_path, monkeypatch
):
    """eval/profile_live.py's merged variant: the same adapter folder with new weights is
    merged again; unchanged weights reuse the copy.  The merged weights are compared
    with a fresh ``merge_adapter`` of the retrained adapter."""
    from safetensors.torch import load_file

    from vllm_exposst.merge import cached_merge

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    base = models.tiny_model("llama", model_cache)
    adapter = make_random_adapter(base, tmp_path / "mt", seed=1)
    write_adapter_meta(adapter, META)
    first = cached_merge(adapter, str(base))
    assert first.parent == tmp_path / "cache" / "merged"
    old = load_file(str(first / "model.safetensors"))
    made = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_merge(adapter, str(base)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == made  # reused, not merged again

    make_random_adapter(base, adapter, seed=2)  # retrained in place: other weights
    again = load_file(str(cached_merge(adapter, str(base)) / "model.safetensors"))
    fresh_folder = merge_adapter(adapter, tmp_path / "fresh", str(base))
    fresh = load_file(str(fresh_folder / "model.safetensors"))
    assert again.keys() == fresh.keys() and all(again[k].equal(fresh[k]) for k in fresh)
    assert any(not again[k].equal(old[k]) for k in old)  # the stale copy is gone
