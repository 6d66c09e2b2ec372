"""Shared fixtures: tiny random Llama and Qwen2 checkpoints, built once per test session."""

from __future__ import annotations

import random

import pytest

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session", params=models.TINY_ARCHS)
def tiny(request: pytest.FixtureRequest, model_cache):
    """``(model, tokenizer, template)`` of a tiny random checkpoint, per architecture."""
    model, tokenizer = models.load(models.tiny_model(request.param, model_cache))
    return model, tokenizer, build_prompt(tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(model_cache):
    model, tokenizer = models.load(models.tiny_model("llama", model_cache))
    return model, tokenizer, build_prompt(tokenizer)


def random_sentence(rng: random.Random, words: tuple[str, ...] | list[str], low=1, high=10) -> str:
    """A made-up sentence from the tiny tokenizer's word list."""
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="session")
def engine_loop():
    from vllm_exposst.engine.loop import LoopThread

    loop = LoopThread()
    yield loop
    loop.close()


def start_engine(engine_loop, path, **kwargs):
    """A :class:`SimulEngine` on a tiny checkpoint: float32, eager, small KV cache."""
    import os

    from vllm_exposst.engine import SimulEngine

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    options = dict(
        model=str(path),
        dtype="float32",
        enforce_eager=True,
        max_model_len=1024,
        max_num_seqs=32,
        disable_log_stats=True,
        seed=0,
    )
    options.update(kwargs)

    async def start():
        return SimulEngine.from_engine_args(**options)

    return engine_loop.run(start())


def engine_for_module(engine_loop, path, env: dict | None = None, **kwargs):
    """Generator body of a module-scoped engine fixture: start (with ``env`` set while
    the engine starts), yield, shut down on the engine's loop."""
    import os

    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        served = start_engine(engine_loop, path, **kwargs)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    yield served

    async def stop():  # on the engine's loop, so its output task ends quietly
        served.shutdown()

    engine_loop.run(stop())


def write_test_set(folder, pairs) -> tuple:
    """``test.en`` / ``test.de`` in ``folder`` from (source, reference) pairs."""
    (folder / "test.en").write_text("".join(src + "\n" for src, _ in pairs))
    (folder / "test.de").write_text("".join(ref + "\n" for _, ref in pairs))
    return folder / "test.en", folder / "test.de"


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
EVERY_PROJECTION = (*ATTENTION, "gate_proj", "up_proj", "down_proj")  # as the project's adapter


def make_random_adapter(base_path, folder, seed: int, rank: int = 8, modules=ATTENTION):
    """A PEFT LoRA adapter with random (non-zero) A and B on ``modules``, saved to ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base, _ = models.load(base_path)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(modules),
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def peft_model(base_path, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(models.load(base_path)[0], adapter).eval()
