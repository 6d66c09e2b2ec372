"""One shrink and one expand per LoRA projection on vLLM 0.32's CPU path, all slices fused.

``PunicaWrapperCPU.add_lora_linear`` runs a shrink and an expand per output slice
(three of each for q/k/v, two for gate/up), each a rank-8 product with Python around
it, and allocates a float32 buffer per slice every call: on a CPU the calls, not the
arithmetic, are what a LoRA step costs beyond the base model (docs/benchmarks.md).
The replacement stacks a projection's slices once per adapter slot: the A matrices
one above the other (``(n*r, in)``), the B matrices block-diagonal (``(out, n*r)``).
Then, per adapter present in the batch (the groups of :mod:`.lora_cpu`), it runs one
shrink into a float32 buffer and one expand into the output, in the same dtypes as
vLLM's slice-by-slice path (the extra products with the zero blocks add exact zeros).

The stacked weights are kept per slot and rebuilt when vLLM writes a slot (a new
adapter, or one removed), which the tensors' version counters tell.  Like the grouped
ops, it takes effect only in a worker of an engine that runs ExPosST (``lora_cpu``'s
switch) and only where the caller passes no buffer of its own; nothing here is
ExPosST-specific: a candidate to offer upstream with the grouped ops.

Under torch.compile (kept for ExPosST LoRA engines by :mod:`.lora_compile_cpu`) the
same products run as one opaque op, ``torch.ops.exposst.lora_linear_cpu``, which reads
the batch's adapters from vLLM's token-index buffer when it runs, not when it is traced.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import lora_cpu, replace

# the stacked weights live on the projection's first A tensor (they die with it), with
# the versions of its weights when they were built
CACHE = "_exposst_fused"
# whether the fused path runs where the grouped ops are active (bench_lora_ops compares)
fuse_slices = True


def _versions(tensors: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in tensors)


def fused_weights(
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    slot: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One slot's A matrices stacked (float32) and B matrices block-diagonal (``dtype``),
    as transposed views ready for ``x @ a @ b``: kept ``(rows, in)`` in memory, which
    MKL multiplies faster than an ``(in, rows)`` copy for a rank-8 output
    (eval/bench_lora_ops.py, docs/benchmarks.md).

    Built on first use and again after vLLM writes any of the projection's weights."""
    versions = _versions(lora_a + lora_b)
    cached = getattr(lora_a[0], CACHE, None)
    if cached is None or cached[0] != versions:
        cached = (versions, {})
        setattr(lora_a[0], CACHE, cached)
    found = cached[1].get((slot, dtype))
    if found is None:
        a = torch.cat([weights[slot, 0] for weights in lora_a]).to(torch.float32)
        b = torch.block_diag(*[weights[slot, 0] for weights in lora_b]).to(dtype)
        found = (a.t(), b.t())  # views of (rows, in): faster for MKL than (in, rows) copies
        cached[1][(slot, dtype)] = found
    return found


# a batch's groups live on vLLM's token-index buffer, with the buffer's version when
# they were read: update_metadata rewrites it in place whenever the batch's mapping changes
TOKEN_GROUPS = "_exposst_token_groups"


def token_groups(indices: torch.Tensor, x: torch.Tensor) -> lora_cpu.Groups:
    """The (adapter slot, rows) groups of the batch whose inputs are ``x``, from the first
    ``len(x)`` entries of vLLM's token-index buffer (``_token_lora_indices``).

    Read once per batch mapping, not once per projection (every projection of every
    layer in between asks for the same groups), and at run time, never at trace time:
    the eager path and the compiled op both call it.  vLLM's prefill metadata (runs of
    equal indices) is derived from the same buffer, so it gives the same groups."""
    tokens = x.shape[0] if x.dim() == 2 else x.numel() // x.shape[-1]
    key = (indices._version, tokens)
    cached = getattr(indices, TOKEN_GROUPS, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    groups = lora_cpu._token_groups(indices[:tokens])
    setattr(indices, TOKEN_GROUPS, (key, groups))
    return groups


def fused_projection(
    groups: lora_cpu.Groups,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: tuple[torch.Tensor, ...],
    lora_b: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
) -> None:
    """``y[:, :sum(slices)] += scale * x @ A.T @ B.T`` per row's adapter, slices fused,
    for the (slot, rows) groups of the batch.

    As vLLM's CPU path: the shrink in float32 (its default buffer), the expand in
    ``y``'s dtype; rows without an adapter are left alone.  A batch with one adapter
    for every row (the common case) is two products and nothing else."""
    if not groups:
        return
    if x.dim() != 2:
        x = x.view(-1, x.shape[-1])
    out = y if y.dim() == 2 else y.view(-1, y.shape[-1])
    width = sum(output_slices)
    if out.shape[1] != width:
        out = out[:, :width]
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    for slot, rows in groups:
        a, b = fused_weights(lora_a, lora_b, slot, out.dtype)
        if lora_cpu._whole(rows, x.shape[0]):
            shrunk = torch.mm(x, a)
            if scale != 1.0:
                shrunk.mul_(scale)
            lora_cpu._addmm(out, shrunk.to(out.dtype), b, True, 1.0)
            continue
        inputs = x[rows] if isinstance(rows, slice) else x.index_select(0, rows)
        shrunk = torch.mm(inputs, a)
        if scale != 1.0:
            shrunk.mul_(scale)
        product = torch.mm(shrunk.to(out.dtype), b)
        if isinstance(rows, slice):
            out[rows] += product
        else:
            out.index_add_(0, rows, product)


# Under torch.compile (patch/lora_compile_cpu.py) Dynamo traces a model once and keeps no
# guards, so nothing that reads the batch's adapters in Python may be traced: the fused
# projection runs as one opaque op.


def lora_linear_op(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    token_indices: torch.Tensor,
    scale: float,
    output_slices: list[int],
) -> None:
    """:func:`fused_projection` as a compiled graph calls it (``exposst::lora_linear_cpu``)."""
    groups = token_groups(token_indices, x)
    fused_projection(groups, y, x, tuple(lora_a), tuple(lora_b), scale, tuple(output_slices))


@functools.wraps(lora_linear_op)
def lora_linear_fake(*args: Any, **kwargs: Any) -> None:
    """What a trace sees: the op writes into ``y`` in place and returns nothing."""
    return None


_library: Any = None  # the op lives as long as its library object


def register_op() -> None:
    """Register ``torch.ops.exposst.lora_linear_cpu`` once per process, the way vLLM
    registers its own ops (``direct_register_custom_op``: far less per-call overhead
    than ``torch.library.custom_op``)."""
    global _library
    if _library is not None:
        return
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    _library = Library("exposst", "FRAGMENT")
    direct_register_custom_op(
        "lora_linear_cpu",
        lora_linear_op,
        mutates_args=["y"],
        fake_impl=lora_linear_fake,
        target_lib=_library,
        dispatch_key="CPU",
    )


def _slices_fit(lora_b: tuple[torch.Tensor, ...], output_slices: tuple[int, ...]) -> bool:
    """Each slice's B as wide as its output slice (the stacked layout's assumption)."""
    return len(lora_b) == len(output_slices) and all(
        weights.shape[-2] == size for weights, size in zip(lora_b, output_slices)
    )


def _takes(lora_b: tuple[torch.Tensor, ...], output_slices: tuple[int, ...], buffer: Any) -> bool:
    """Whether the fused path runs: grouped ops active, no caller buffer, and the slices
    fit (else vLLM's own slice-by-slice path)."""
    if not (lora_cpu._active and fuse_slices) or buffer is not None:
        return False
    return _slices_fit(lora_b, output_slices)


def apply() -> None:
    """Route ``PunicaWrapperCPU.add_lora_linear`` through the fused path (when active)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    register_op()
    replace(PunicaWrapperCPU, "add_lora_linear", _switched)


def _switched(original: Any) -> Any:
    def add_lora_linear(
        self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs
    ):
        args = (y, x, lora_a_stacked, lora_b_stacked, scale, output_slices)
        if torch.compiler.is_compiling():  # only ExPosST engines (patch/lora_compile_cpu.py)
            if buffer is not None or not _slices_fit(lora_b_stacked, output_slices):
                raise RuntimeError(
                    "vllm-exposst: this LoRA layer's slices do not fit the fused op; "
                    "start with --enforce-eager"
                )
            torch.ops.exposst.lora_linear_cpu(
                y,
                x,
                list(lora_a_stacked),
                list(lora_b_stacked),
                self._token_lora_indices,
                scale,
                list(output_slices),
            )
            return None
        if not _takes(lora_b_stacked, output_slices, buffer):
            return original(self, *args, buffer=buffer, **kwargs)
        if torch.autograd.profiler._is_profiler_enabled:  # eval/profile_step.py's LoRA share
            with torch.profiler.record_function(lora_cpu.PROFILE_LABEL):
                return fused_projection(token_groups(self._token_lora_indices, x), *args)
        return fused_projection(token_groups(self._token_lora_indices, x), *args)

    return add_lora_linear
