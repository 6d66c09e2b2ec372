"""Grouped LoRA ops for vLLM 0.32's CPU path, with the fix for requests without an adapter.

vLLM's PyTorch LoRA ops (``vllm/lora/ops/torch_ops/lora_ops.py``, what
``PunicaWrapperCPU`` calls) copy every token's adapter weights (``weights[indices]``)
and multiply token by token (``einsum("bi, boi -> bo")``), in every projection of
every layer; and they read index ``-1`` (a token without a LoRA) as the *last*
adapter slot, so plain requests batched beside LoRA requests run someone else's
adapter (the GPU kernels skip ``-1``).

The replacements below group the tokens by adapter and do one matrix product per
adapter present, written in place (one ``addmm`` into the output, no copy, when one
adapter covers the batch, which is every step with a single adapter; rows gathered
and scattered when adapters interleave); tokens with index ``-1`` get a zero LoRA
contribution. The arithmetic stays in the dtype vLLM's ops use (the output
tensor's; below float32 the product is rounded before it is added, as theirs is),
so results equal theirs up to summation order.

They are installed by the plugin but only take effect in a worker process of an
engine that runs ExPosST (the worker patch calls :func:`activate`), so other vLLM
users are untouched.  Nothing here is ExPosST-specific: a candidate to offer upstream.
"""

from __future__ import annotations

from typing import Any

import torch

from . import replace

# (adapter slot, its rows): a slice when the rows are one run, else a row-index tensor
Groups = list[tuple[int, slice | torch.Tensor]]


# The groups of the last index tensor seen, by value: every projection of every layer
# of one step asks for the same grouping, so the row tensors are built once a step.
_last: dict[str, tuple[Any, Groups]] = {}


def _remembered(kind: str, key: Any, build: Any) -> Groups:
    cached = _last.get(kind)
    if cached is not None and cached[0] == key:
        return cached[1]
    groups = build()
    _last[kind] = (key, groups)
    return groups


def _token_groups(indices: torch.Tensor) -> Groups:
    """Group the rows of a per-token adapter index tensor (``-1``: no adapter)."""
    values = indices.tolist()
    count = len(values)
    first = values[0] if values else -1
    if values.count(first) == count:  # one adapter (or none) for every token
        return [(first, slice(0, count))] if first >= 0 and count else []
    return _remembered("tokens", (indices.device, values), lambda: _split(indices, values))


def _split(indices: torch.Tensor, values: list[int]) -> Groups:
    groups: Groups = []
    for adapter in sorted(set(values)):
        if adapter < 0:
            continue
        start, size = values.index(adapter), values.count(adapter)
        if values[start : start + size].count(adapter) == size:
            groups.append((adapter, slice(start, start + size)))
        else:
            groups.append((adapter, (indices == adapter).nonzero().view(-1)))
    return groups


def _segment_groups(starts: torch.Tensor, lengths: torch.Tensor, adapters: torch.Tensor) -> Groups:
    """Group the runs of the sgmv metadata (consecutive tokens sharing an adapter)."""
    key = (starts.device, starts.tolist(), lengths.tolist(), adapters.tolist())
    if len(key[3]) == 1:  # one run: no grouping to remember
        return _runs(*key)
    return _remembered("segments", key, lambda: _runs(*key))


def _runs(device: torch.device, starts: list, lengths: list, adapters: list) -> Groups:
    runs: dict[int, list[int]] = {}
    for start, length, adapter in zip(starts, lengths, adapters):
        if adapter >= 0 and length > 0:
            runs.setdefault(adapter, []).extend((start, length))
    groups: Groups = []
    for adapter, spans in sorted(runs.items()):
        if len(spans) == 2:  # one run: a row range
            groups.append((adapter, slice(spans[0], spans[0] + spans[1])))
        else:
            rows = [row for s, n in zip(spans[::2], spans[1::2]) for row in range(s, s + n)]
            groups.append((adapter, torch.tensor(rows, device=device)))
    return groups


def _whole(where: slice | torch.Tensor, rows: int) -> bool:
    return isinstance(where, slice) and where.start == 0 and where.stop == rows


def _adapter(weights: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    """One slot's ``(out, in)`` matrix, in the compute dtype (no copy when it matches)."""
    matrix = weights[slot, 0] if weights.dim() == 4 else weights[slot]  # (slots, 1, out, in)
    return matrix if matrix.dtype == dtype else matrix.to(dtype=dtype)


def _fits(inputs: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the result can go straight into ``target`` (one row per input row, and
    ``target`` no wider than the adapter's output)."""
    return inputs.shape[0] == target.shape[0] and target.shape[1] <= weights.shape[-2]


def _apply(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    groups: Groups,
    target: torch.Tensor,
    add: bool,
    alpha: float = 1.0,
) -> None:
    """``target[t] (+)= alpha * inputs[t] @ W[slot(t)][:width].T`` in ``target``'s dtype.

    One ``addmm`` per adapter present, written in place (no per-token weight copies);
    rows without an adapter keep their value when adding and are zero otherwise.
    """
    dtype, width = target.dtype, target.shape[1]
    inputs = inputs.to(dtype=dtype)
    if len(groups) == 1 and _whole(groups[0][1], inputs.shape[0]):  # one adapter: one matmul
        _addmm(target, inputs, _adapter(weights, groups[0][0], dtype)[:width].t(), add, alpha)
        return
    if not add:
        target.zero_()
    for slot, where in groups:
        matrix = _adapter(weights, slot, dtype)[:width].t()
        if isinstance(where, slice):
            _addmm(target[where], inputs[where], matrix, True, alpha)
        else:
            product = inputs.index_select(0, where) @ matrix
            if dtype == torch.float32:
                target.index_add_(0, where, product, alpha=alpha)
            else:  # rounded before it is scaled, as in _addmm
                target.index_add_(0, where, _scaled(product, alpha))


def _addmm(
    target: torch.Tensor, inputs: torch.Tensor, matrix: torch.Tensor, add: bool, alpha: float
) -> None:
    """``target (+)= alpha * inputs @ matrix`` in place.

    float32: one fused ``addmm_``. Lower precision: the product is rounded to the
    dtype before it is scaled and added, as vLLM's ops round it.
    """
    if target.dtype == torch.float32:
        target.addmm_(inputs, matrix, beta=1 if add else 0, alpha=alpha)
    elif add:
        target.add_(_scaled(torch.mm(inputs, matrix), alpha))
    else:
        target.copy_(_scaled(torch.mm(inputs, matrix), alpha))


def _scaled(product: torch.Tensor, alpha: float) -> torch.Tensor:
    return product if alpha == 1.0 else alpha * product


def _products(
    inputs: torch.Tensor, weights: torch.Tensor, groups: Groups, dtype: torch.dtype
) -> torch.Tensor:
    """Every row's product as a new tensor, for the shapes :func:`_apply` does not take."""
    outputs = torch.zeros((inputs.shape[0], weights.shape[-2]), dtype=dtype, device=inputs.device)
    _apply(inputs, weights, groups, outputs, add=False)
    return outputs


def _shrink(inputs, weights, groups, output_tensor, scaling) -> None:
    target = output_tensor[:, : weights.shape[-2]]
    if _fits(inputs, weights, target) and target.shape[1] == weights.shape[-2]:
        _apply(inputs, weights, groups, target, add=False, alpha=scaling)
    else:  # as vLLM does (broadcasting, or its error)
        target[:] = scaling * _products(inputs, weights, groups, output_tensor.dtype)


def _expand(inputs, weights, groups, output_tensor, add_inputs) -> None:
    common = min(weights.shape[-2], output_tensor.shape[1])
    target = output_tensor[:, :common]
    if not groups and add_inputs:
        return  # no adapter: nothing to add
    if _fits(inputs, weights, target):
        _apply(inputs, weights, groups, target, add=add_inputs)
        return
    outputs = _products(inputs, weights, groups, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1  # vLLM's ops add a single row to every row
    if add_inputs:
        target += outputs[:limit, :common]
    else:
        target[:] = outputs[:limit, :common]


def _expand_slice(inputs, weights, groups, output_tensor, offset, size, add_inputs) -> None:
    target = output_tensor[:, offset : offset + size]
    if not groups and add_inputs:
        return
    if _fits(inputs, weights, target) and target.shape[1] == weights.shape[-2]:
        _apply(inputs, weights, groups, target, add=add_inputs)
    elif add_inputs:
        target += _products(inputs, weights, groups, output_tensor.dtype)
    else:
        target[:] = _products(inputs, weights, groups, output_tensor.dtype)


# Decode ops (one adapter index per token), signatures as vLLM's.


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    groups = _token_groups(lora_indices_tensor)
    _shrink(inputs, lora_a_weights, groups, output_tensor, scaling)


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    groups = _token_groups(lora_indices_tensor)
    _expand(inputs, lora_b_weights, groups, output_tensor, add_inputs)


def bgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    lora_indices_tensor,
    slice_offset,
    slice_size,
    add_inputs=True,
):
    groups = _token_groups(lora_indices_tensor)
    _expand_slice(
        inputs, lora_b_weights, groups, output_tensor, slice_offset, slice_size, add_inputs
    )


# Prefill ops (runs of tokens sharing an adapter), signatures as vLLM's.


def sgmv_shrink(
    inputs,
    lora_a_weights,
    output_tensor,
    b_seq_start_loc,
    seq_len_tensor,
    lora_indices_tensor,
    batches,
    max_seq_length,
    token_nums,
    scaling,
):
    groups = _segment_groups(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    _shrink(inputs, lora_a_weights, groups, output_tensor, scaling)


def sgmv_expand(
    inputs,
    lora_b_weights,
    output_tensor,
    b_seq_start_loc,
    seq_len_tensor,
    lora_indices_tensor,
    batches,
    max_seq_length,
    token_nums,
    add_inputs=False,
):
    groups = _segment_groups(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    _expand(inputs, lora_b_weights, groups, output_tensor, add_inputs)


def sgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    b_seq_start_loc,
    seq_len_tensor,
    lora_indices_tensor,
    batches,
    max_seq_length,
    token_nums,
    slice_offset,
    slice_size,
    add_inputs=False,
):
    groups = _segment_groups(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    _expand_slice(
        inputs, lora_b_weights, groups, output_tensor, slice_offset, slice_size, add_inputs
    )


_active = False
FIXED = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


def activate() -> None:
    """Use the grouped ops in this process (a worker of an ExPosST engine)."""
    global _active
    _active = True


def apply() -> None:
    """Route the six torch LoRA ops through the grouped ones where vLLM looks them up."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name, fixed in FIXED.items():
            if hasattr(module, name):
                replace(module, name, lambda original, fixed=fixed: _switched(original, fixed))


def _switched(original: Any, fixed: Any) -> Any:
    def op(*args: Any, **kwargs: Any) -> Any:
        chosen = fixed if _active else original
        if torch.autograd.profiler._is_profiler_enabled:  # eval/profile_step.py's LoRA share
            with torch.profiler.record_function(PROFILE_LABEL):
                return chosen(*args, **kwargs)
        return chosen(*args, **kwargs)

    return op


PROFILE_LABEL = "exposst::lora"  # a profiler range around every LoRA op (only when profiling)
