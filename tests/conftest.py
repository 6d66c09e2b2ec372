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
