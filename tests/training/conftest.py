"""Fixtures of the trainer tests: one torch thread, the tiny Llama checkpoint's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vllm_exposst import models


@pytest.fixture(scope="module")
def one_thread():
    """Two busy cores: one torch thread avoids spin contention (about 30x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_path(model_cache) -> Path:
    return models.tiny_model("llama", model_cache)
