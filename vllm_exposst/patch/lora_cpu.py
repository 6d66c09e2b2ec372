"""Fix for vLLM 0.32's PyTorch LoRA ops (the CPU path): requests without an adapter.

``PunicaWrapperCPU`` marks tokens without a LoRA with index ``-1`` and the torch
ops gather ``weights[indices]``; ``-1`` picks the *last* adapter slot, so with
``max_loras`` adapters loaded, plain requests batched beside LoRA requests run
with someone else's adapter (the GPU kernels skip ``-1``).  The replacements below
give those tokens a zero LoRA contribution.  They are installed by the plugin but
only take effect in a worker process of an engine that runs ExPosST (the worker patch
calls :func:`activate`), so other vLLM users are untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from . import replace


def _gather(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-token adapter weights, zero where the token has no adapter (index -1)."""
    selected = weights[indices.clamp(min=0)].to(dtype=dtype)
    valid = indices >= 0
    if not bool(valid.all()):
        selected = selected * valid.view(-1, *([1] * (selected.dim() - 1))).to(dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    selected = _gather(lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    selected = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    lora_indices_tensor,
    slice_offset,
    slice_size,
    add_inputs=True,
):
    selected = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


_active = False
FIXED = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}


def activate() -> None:
    """Use the fixed ops in this process (a worker of an ExPosST engine)."""
    global _active
    _active = True


def apply() -> None:
    """Route the three gathering ops through the fix where vLLM looks them up."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name, fixed in FIXED.items():
            if hasattr(module, name):
                replace(module, name, lambda original, fixed=fixed: _switched(original, fixed))


def _switched(original: Any, fixed: Any) -> Any:
    def op(*args: Any, **kwargs: Any) -> Any:
        return (fixed if _active else original)(*args, **kwargs)

    return op
