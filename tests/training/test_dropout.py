"""Fast LoRA dropout masks (training/dropout.py) against what dropout is: each element
dropped independently with probability p, kept ones scaled by 1 / (1 - p), the input
untouched in eval mode, and the gradient the same mask.  The statistics are checked
against the binomial distribution, not against ``nn.Dropout``'s random stream."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_exposst import models
from vllm_exposst.training import dropout
from vllm_exposst.training.dropout import FastDropout, set_dropout_masks
from vllm_exposst.training.trainer import TrainConfig, make_trainer, prepare

from .test_trainer import cipher_pairs, write_pairs

ELEMENTS = 4_000_000


def within_sigmas(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_element_is_dropped_with_probability_p_and_kept_ones_are_rescaled(p):
    torch.manual_seed(0)
    out = FastDropout(p).train()(torch.ones(2000, ELEMENTS // 2000))
    dropped = out == 0
    assert within_sigmas(dropped.float().mean().item(), p, ELEMENTS)
    kept = out[~dropped]
    assert torch.all(kept == kept[0])  # one scale for every kept element
    assert abs(kept[0].item() - 1 / (1 - p)) <= 1e-4 / (1 - p)
    assert abs(out.mean().item() - 1.0) <= 5 * math.sqrt(p / (1 - p) / ELEMENTS)


def test_elements_are_independent_in_every_lane_of_a_random_word():
    """Four elements share one 64-bit draw: each lane, and each pair of neighbours, must
    still behave as independent Bernoulli(p) draws."""
    p = 0.25
    torch.manual_seed(1)
    dropped = (FastDropout(p).train()(torch.ones(ELEMENTS)) == 0).view(-1, 4)
    lanes = dropped.float().mean(0)
    assert all(within_sigmas(rate.item(), p, ELEMENTS // 4) for rate in lanes), lanes
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (dropped[:, a] & dropped[:, b]).float().mean().item()
        assert within_sigmas(both, p * p, ELEMENTS // 4), (a, b, both)
    across_words = (dropped[:-1, 3] & dropped[1:, 0]).float().mean().item()
    assert within_sigmas(across_words, p * p, ELEMENTS // 4 - 1)


def test_odd_shapes_eval_mode_and_the_edges():
    layer = FastDropout(0.3).train()
    x = torch.randn(3, 5, 7)  # 105 elements: not a multiple of four
    out = layer(x)
    assert out.shape == x.shape and ((out == 0) | torch.isclose(out, x / 0.7, atol=1e-3)).all()
    assert layer.eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    bf16 = torch.randn(64, 64, dtype=torch.bfloat16)
    assert FastDropout(0.5).train()(bf16).dtype == torch.bfloat16


def test_the_gradient_is_the_same_mask_and_a_seed_repeats_it():
    x = torch.randn(300, 200, requires_grad=True)
    torch.manual_seed(5)
    out = FastDropout(0.2).train()(x)
    out.backward(torch.ones_like(out))
    mask = (out != 0).float() / (1 - round(0.2 * 65536) / 65536)
    assert torch.allclose(x.grad, mask)
    torch.manual_seed(5)
    again = FastDropout(0.2).train()(x)
    assert torch.equal(again, out)


def test_the_trainer_swaps_peft_dropout_by_forward_and_device(tmp_path, model_cache):
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", cipher_pairs(seed=2, count=6)),
        output_dir=str(tmp_path / "out"),
        model=str(models.tiny_model("llama", model_cache)),
        lora_dropout=0.1,
        precision="float32",
        progress=False,
    )
    prepared = prepare(config)
    lora = [m for n, m in prepared.model.named_modules() if n.endswith("lora_dropout.default")]
    assert lora and all(type(m) is torch.nn.Dropout for m in lora)  # PEFT's own
    make_trainer(prepared)  # auto, fast forward, CPU
    assert all(type(m) is FastDropout and m.p == 0.1 for m in lora)
    config.forward = "plain"
    make_trainer(prepared)
    assert all(type(m) is torch.nn.Dropout for m in lora)  # the plain path as before
    assert set_dropout_masks(prepared.model, "fast") == len(lora)
    assert dropout.resolve_dropout_masks("auto", "cuda", "fast") == "torch"
    assert dropout.resolve_dropout_masks("torch", "cpu", "fast") == "torch"
