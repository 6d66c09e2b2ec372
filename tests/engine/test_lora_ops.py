"""The grouped CPU LoRA ops (vllm_exposst.patch.lora_cpu) against two references.

vLLM 0.32's own torch ops (imported from vllm.lora.ops.torch_ops) for inputs where
every token has an adapter (they read index -1 as the last slot), and a per-token
loop written here for the -1 case (no adapter: zero contribution).  Random inputs,
mixed adapters, every slice of a fused projection, float32 and bfloat16.
"""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops import torch_ops as vllm_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.utils import compute_meta

from vllm_exposst import plugin
from vllm_exposst.patch import lora_cpu

HIDDEN, RANK, SLOTS = 24, 4, 3
SLICES = {"qkv": (16, 8, 8), "gate_up": (20, 20), "single": (24,)}
DTYPES = [torch.float32, torch.bfloat16]
# index patterns: one adapter (the fast path), runs, interleaved, with tokens without one
PATTERNS = {
    "one": [1] * 9,
    "runs": [0, 0, 0, 2, 2, 1, 1, 1, 1],
    "interleaved": [2, 0, 2, 1, 0, 0, 2, 1, 2, 2, 0],
    "single-token": [2],
    "none": [-1] * 6,
    "mixed-none": [-1, 0, 0, -1, 2, -1, 1, 1, 0, -1],
    "random": None,  # drawn per test
}


@pytest.fixture(autouse=True)
def vllm_ops_unswitched(monkeypatch):
    """vLLM's sgmv ops call bgmv through the patched module: keep those the originals."""
    monkeypatch.setattr(lora_cpu, "_active", False)


def indices_for(pattern: str, generator: torch.Generator) -> torch.Tensor:
    values = PATTERNS[pattern]
    if values is None:
        return torch.randint(-1, SLOTS, (37,), generator=generator)
    return torch.tensor(values)


def loop_reference(inputs, weights, indices, dtype):
    """Token by token: ``x[t] @ W[slot].T``, zero where the slot is -1."""
    rows = []
    for x, slot in zip(inputs, indices.tolist()):
        if slot < 0:
            rows.append(torch.zeros(weights.shape[-2], dtype=dtype))
        else:
            rows.append(weights[slot, 0].to(dtype) @ x.to(dtype))
    return torch.stack(rows)


def sgmv_meta(indices: torch.Tensor) -> tuple:
    """The prefill metadata as PunicaWrapperBase computes it (runs of equal indices)."""
    starts, lengths, slots, batches, longest, tokens, _ = compute_meta(indices)
    return starts, lengths, slots, batches, longest, tokens


def make(pattern, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    indices = indices_for(pattern, generator)
    tokens = indices.shape[0]
    inputs = torch.randn(tokens, HIDDEN, generator=generator).to(dtype)
    shrink_w = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator).to(dtype)
    return indices, inputs, shrink_w, generator


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("prefill", [False, True], ids=["bgmv", "sgmv"])
def test_shrink_equals_references(pattern, dtype, prefill):
    indices, inputs, weights, _ = make(pattern, dtype, seed=1)
    out = torch.full((len(indices), RANK), 7.0)  # the float32 buffer; every row is written
    if prefill:
        lora_cpu.sgmv_shrink(inputs, weights, out, *sgmv_meta(indices), 0.5)
    else:
        lora_cpu.bgmv_shrink(inputs, weights, out, indices, 0.5)
    torch.testing.assert_close(out, 0.5 * loop_reference(inputs, weights, indices, out.dtype))
    if bool((indices >= 0).all()):
        expected = torch.empty_like(out)
        if prefill:
            vllm_ops.sgmv_shrink(inputs, weights, expected, *sgmv_meta(indices), 0.5)
        else:
            vllm_ops.bgmv_shrink(inputs, weights, expected, indices, 0.5)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("shape", list(SLICES))
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("prefill", [False, True], ids=["bgmv", "sgmv"])
def test_expand_slice_equals_references(pattern, dtype, shape, add_inputs, prefill):
    """Every slice of a fused projection, written where its offset says."""
    indices, _, _, generator = make(pattern, dtype, seed=2)
    sizes = SLICES[shape]
    buffer = torch.randn(len(indices), RANK, generator=generator)  # shrink's float32 output
    start = torch.randn(len(indices), sum(sizes), generator=generator).to(dtype)
    ours, theirs, looped = start.clone(), start.clone(), start.clone()
    offset = 0
    for size in sizes:
        weights = torch.randn(SLOTS, 1, size, RANK, generator=generator).to(dtype)
        args = (offset, size, add_inputs)
        if prefill:
            lora_cpu.sgmv_expand_slice(buffer, weights, ours, *sgmv_meta(indices), *args)
        else:
            lora_cpu.bgmv_expand_slice(buffer, weights, ours, indices, *args)
        expected = loop_reference(buffer, weights, indices, dtype)
        if add_inputs:
            looped[:, offset : offset + size] += expected
        else:
            looped[:, offset : offset + size] = expected
        if bool((indices >= 0).all()):
            if prefill:
                vllm_ops.sgmv_expand_slice(buffer, weights, theirs, *sgmv_meta(indices), *args)
            else:
                vllm_ops.bgmv_expand_slice(buffer, weights, theirs, indices, *args)
        offset += size
    torch.testing.assert_close(ours, looped)
    if bool((indices >= 0).all()):
        torch.testing.assert_close(ours, theirs)
    if not bool((indices >= 0).any()) and add_inputs:
        assert torch.equal(ours, start)  # no adapter: the output untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("width", [HIDDEN - 4, HIDDEN, HIDDEN + 6])  # padded either side
@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("prefill", [False, True], ids=["bgmv", "sgmv"])
def test_expand_equals_references(pattern, dtype, width, add_inputs, prefill):
    indices, _, _, generator = make(pattern, dtype, seed=3)
    buffer = torch.randn(len(indices), RANK, generator=generator).to(dtype)
    weights = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=generator).to(dtype)
    start = torch.randn(len(indices), width, generator=generator).to(dtype)
    ours, theirs, looped = start.clone(), start.clone(), start.clone()
    if prefill:
        lora_cpu.sgmv_expand(buffer, weights, ours, *sgmv_meta(indices), add_inputs)
    else:
        lora_cpu.bgmv_expand(buffer, weights, ours, indices, add_inputs)
    common = min(width, HIDDEN)
    expected = loop_reference(buffer, weights, indices, dtype)[:, :common]
    if add_inputs:
        looped[:, :common] += expected
    else:
        looped[:, :common] = expected
    torch.testing.assert_close(ours, looped)
    if bool((indices >= 0).all()):
        if prefill:
            vllm_ops.sgmv_expand(buffer, weights, theirs, *sgmv_meta(indices), add_inputs)
        else:
            vllm_ops.bgmv_expand(buffer, weights, theirs, indices, add_inputs)
        torch.testing.assert_close(ours, theirs)


def test_expand_broadcasts_one_row_as_vllm_does():
    """vLLM's bgmv_expand adds a single result row to every output row; so do we."""
    generator = torch.Generator().manual_seed(4)
    buffer = torch.randn(1, RANK, generator=generator)
    weights = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=generator)
    start = torch.randn(5, HIDDEN, generator=generator)
    ours, theirs = start.clone(), start.clone()
    lora_cpu.bgmv_expand(buffer, weights, ours, torch.tensor([1]), True)
    vllm_ops.bgmv_expand(buffer, weights, theirs, torch.tensor([1]), True)
    torch.testing.assert_close(ours, theirs)


def test_three_dimensional_weights_as_vllm_does():
    """Weights stacked without the singleton dimension (slots, out, in) also work."""
    indices, inputs, weights, _ = make("interleaved", torch.float32, seed=5)
    flat = weights.squeeze(1).contiguous()
    ours, theirs = torch.zeros(len(indices), RANK), torch.zeros(len(indices), RANK)
    lora_cpu.bgmv_shrink(inputs, flat, ours, indices, 2.0)
    vllm_ops.bgmv_shrink(inputs, flat, theirs, indices, 2.0)
    torch.testing.assert_close(ours, theirs)


def test_the_cpu_wrapper_calls_the_grouped_ops_only_when_active(monkeypatch):
    """PunicaWrapperCPU's names are switched: vLLM's ops until activate(), ours after."""
    plugin.register()
    indices = torch.tensor([-1, 0, SLOTS - 1, -1])  # -1 beside the last slot
    _, inputs, weights, _ = make("one", torch.float32, seed=6)
    inputs = inputs[: len(indices)]
    meta = sgmv_meta(indices)
    for name in ("sgmv_shrink", "bgmv_shrink"):
        op = getattr(punica_cpu, name)
        args = (*meta, 1.0) if name.startswith("s") else (indices, 1.0)
        before, after = torch.zeros(4, RANK), torch.zeros(4, RANK)
        op(inputs, weights, before, *args)  # vLLM's: -1 reads the last slot
        torch.testing.assert_close(before[0], weights[-1, 0] @ inputs[0])
        monkeypatch.setattr(lora_cpu, "_active", True)
        op(inputs, weights, after, *args)
        monkeypatch.setattr(lora_cpu, "_active", False)
        assert torch.all(after[0] == 0) and torch.all(after[3] == 0), name
        torch.testing.assert_close(after[1:3], before[1:3])


def cpu_wrapper(indices: torch.Tensor, prefill: bool) -> punica_cpu.PunicaWrapperCPU:
    """vLLM's own wrapper, its metadata set as the runner sets it (slot s is LoRA id s+1)."""
    from vllm.lora.layers import LoRAMapping

    wrapper = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=64, device="cpu")
    ids = tuple(int(slot) + 1 for slot in indices.tolist())  # -1 -> id 0: no LoRA
    mapping = LoRAMapping(ids, ids, is_prefill=prefill)
    wrapper.update_metadata(mapping, list(range(1, SLOTS + 1)), SLOTS, vocab_size=100)
    return wrapper


def linear_reference(x, lora_a, lora_b, indices, scale, start):
    """Slice by slice, token by token: the shrink in float32, the expand in y's dtype."""
    expected = start.clone()
    offset = 0
    for a, b in zip(lora_a, lora_b):
        size = b.shape[-2]
        shrunk = scale * loop_reference(x, a, indices, torch.float32)
        expected[:, offset : offset + size] += loop_reference(shrunk, b, indices, start.dtype)
        offset += size
    return expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("shape", list(SLICES))
@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_fused_lora_linear_equals_slice_by_slice(pattern, dtype, shape, prefill, monkeypatch):
    """patch/lora_linear_cpu (slices stacked, one shrink and one expand per adapter)
    against a per-token, per-slice loop, and against vLLM's own slice-by-slice
    add_lora_linear with vLLM's ops where every token has an adapter."""
    plugin.register()
    indices, x, _, generator = make(pattern, dtype, seed=7)
    sizes = SLICES[shape]
    lora_a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator) for _ in sizes)
    lora_b = tuple(torch.randn(SLOTS, 1, s, RANK, generator=generator) for s in sizes)
    lora_a, lora_b = (tuple(w.to(dtype) for w in stack) for stack in (lora_a, lora_b))
    start = torch.randn(len(indices), sum(sizes) + 5, generator=generator).to(dtype)  # + padding
    wrapper = cpu_wrapper(indices, prefill)
    ours, theirs = start.clone(), start.clone()
    monkeypatch.setattr(lora_cpu, "_active", True)
    wrapper.add_lora_linear(ours, x, lora_a, lora_b, 0.5, sizes)
    monkeypatch.setattr(lora_cpu, "_active", False)
    torch.testing.assert_close(ours, linear_reference(x, lora_a, lora_b, indices, 0.5, start))
    if bool((indices >= 0).all()):
        wrapper.add_lora_linear(theirs, x, lora_a, lora_b, 0.5, sizes)  # vLLM's path and ops
        torch.testing.assert_close(ours, theirs)
    if not bool((indices >= 0).any()):
        assert torch.equal(ours, start)


def test_fused_weights_follow_a_slot_rewrite(monkeypatch):
    """A new adapter written into a slot (as vLLM's set_lora does, in place) is used at
    the next call, not the stacked copy of the old one."""
    plugin.register()
    indices, x, _, generator = make("runs", torch.float32, seed=8)
    sizes = SLICES["qkv"]
    lora_a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator) for _ in sizes)
    lora_b = tuple(torch.randn(SLOTS, 1, s, RANK, generator=generator) for s in sizes)
    wrapper = cpu_wrapper(indices, prefill=True)
    monkeypatch.setattr(lora_cpu, "_active", True)
    start = torch.zeros(len(indices), sum(sizes))
    first = start.clone()
    wrapper.add_lora_linear(first, x, lora_a, lora_b, 1.0, sizes)
    with torch.inference_mode():  # vLLM loads adapters under inference mode
        lora_a[1][2, 0].copy_(torch.randn(RANK, HIDDEN, generator=generator))
        lora_b[2][0, 0].zero_()
    second = start.clone()
    wrapper.add_lora_linear(second, x, lora_a, lora_b, 1.0, sizes)
    torch.testing.assert_close(second, linear_reference(x, lora_a, lora_b, indices, 1.0, start))
    assert not torch.allclose(first, second)


def test_fused_weights_belong_to_their_tensors_not_their_addresses(monkeypatch):
    """New weight tensors at the address of old ones, with equal version counters (as
    freed and reallocated memory can be), get their own stacked copy."""
    plugin.register()
    indices, x, _, generator = make("runs", torch.float32, seed=9)
    sizes = SLICES["gate_up"]
    base_a = [torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator) for _ in sizes]
    base_b = [torch.randn(SLOTS, 1, s, RANK, generator=generator) for s in sizes]
    wrapper = cpu_wrapper(indices, prefill=True)
    monkeypatch.setattr(lora_cpu, "_active", True)
    start = torch.zeros(len(indices), sum(sizes))
    wrapper.add_lora_linear(start.clone(), x, tuple(base_a), tuple(base_b), 1.0, sizes)
    for weights in base_a + base_b:  # new values, no version bump (through .data)
        weights.data.copy_(torch.randn(weights.shape, generator=generator))
    views_a, views_b = tuple(w[:] for w in base_a), tuple(w[:] for w in base_b)
    assert views_a[0].data_ptr() == base_a[0].data_ptr()
    ours = start.clone()
    wrapper.add_lora_linear(ours, x, views_a, views_b, 1.0, sizes)
    torch.testing.assert_close(ours, linear_reference(x, views_a, views_b, indices, 1.0, start))


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_fused_lora_linear_follows_a_new_mapping(prefill, monkeypatch):
    """The groups read once per batch mapping (patch/lora_linear_cpu.token_groups) are
    read again when the runner maps the next batch onto the same wrapper: same token
    count, other adapters, then fewer tokens."""
    from vllm.lora.layers import LoRAMapping

    plugin.register()
    generator = torch.Generator().manual_seed(10)
    sizes = SLICES["gate_up"]
    lora_a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator) for _ in sizes)
    lora_b = tuple(torch.randn(SLOTS, 1, s, RANK, generator=generator) for s in sizes)
    wrapper = cpu_wrapper(torch.tensor([0] * 6), prefill)
    monkeypatch.setattr(lora_cpu, "_active", True)
    for slots in ([0] * 6, [2, 2, -1, 1, 0, 0], [1] * 6, [-1, 1, 1]):
        indices = torch.tensor(slots)
        ids = tuple(slot + 1 for slot in slots)
        mapping = LoRAMapping(ids, ids, is_prefill=prefill)
        wrapper.update_metadata(mapping, list(range(1, SLOTS + 1)), SLOTS, vocab_size=100)
        x = torch.randn(len(slots), HIDDEN, generator=generator)
        start = torch.randn(len(slots), sum(sizes), generator=generator)
        ours = start.clone()
        wrapper.add_lora_linear(ours, x, lora_a, lora_b, 1.0, sizes)
        expected = linear_reference(x, lora_a, lora_b, indices, 1.0, start)
        torch.testing.assert_close(ours, expected, msg=f"mapping {slots}")
