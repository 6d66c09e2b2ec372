"""The position-id hook in vLLM's V1 model runner (worker side).

vLLM computes ``positions = num_computed_tokens + arange`` in
``GPUModelRunner._prepare_inputs`` and uses those *physical* indices for the token
ids and the KV slot mapping.  After that method returns, this hook overwrites the
positions handed to the model (``self.positions``) for ExPosST requests only: in
Llama and Qwen2 they reach the rotary embedding alone, and attention stays causal
over physical order.  Ordinary requests keep vLLM's own values.

Each streaming chunk of a session carries, in ``SamplingParams.extra_args``,
``{"exposst": {"start": i, "positions": [...], "decode": d}}``: token indices
``i, i+1, ...`` of the request get ``positions``, and tokens generated after them get
``d, d+1, ...``.  The table is kept per request for its whole life, so recomputation
after preemption and chunked prefill replay the same positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)
EXTRA_KEY = "exposst"


@dataclass
class PositionTable:
    """Positions of one request's tokens, by physical index."""

    known: list[int] = field(default_factory=list)
    decode: int = 0
    _array: np.ndarray | None = field(default=None, repr=False)  # ``known``, for lookups

    def update(self, start: int, positions: list[int], decode: int) -> None:
        """Tokens ``start...`` get ``positions``; tokens generated since the last chunk
        (indices between the known ones and ``start``) keep their decode positions."""
        gap = start - len(self.known)
        if gap > 0:
            self.known.extend(range(self.decode, self.decode + gap))
        del self.known[start:]
        self.known.extend(positions)
        self.decode = decode
        self._array = None

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        if self._array is None:
            self._array = np.asarray(self.known, dtype=np.int64)
        known = self._array
        beyond = self.decode + (indices - len(known))
        if len(known) == 0:
            return beyond
        return np.where(indices < len(known), known[np.minimum(indices, len(known) - 1)], beyond)


def exposst_args(sampling_params: Any) -> dict | None:
    """The ExPosST part of a request's ``extra_args``, if it is a session."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    return extra.get(EXTRA_KEY)


class PositionHook:
    """Per-worker state: one table per live ExPosST request."""

    def __init__(self) -> None:
        self.tables: dict[str, PositionTable] = {}

    def on_scheduler_output(self, scheduler_output: Any) -> None:
        for req_id in scheduler_output.finished_req_ids:
            self.tables.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            args = exposst_args(new.sampling_params)
            if args is None or "positions" not in args:
                continue
            table = self.tables.setdefault(new.req_id, PositionTable())
            table.update(int(args["start"]), list(args["positions"]), int(args["decode"]))

    def rewrite(self, runner: Any, num_scheduled_tokens: np.ndarray) -> None:
        """Replace physical positions by allocated ones for ExPosST requests."""
        if not self.tables:
            return
        req_ids = runner.input_batch.req_ids[: len(num_scheduled_tokens)]
        ends = np.cumsum(num_scheduled_tokens)
        total = int(ends[-1]) if len(ends) else 0
        physical = None
        for req_id, end, count in zip(req_ids, ends, num_scheduled_tokens):
            table = self.tables.get(req_id)
            if table is None or count == 0:
                continue
            if physical is None:
                physical = runner.positions[:total].cpu().numpy().copy()
            start = int(end - count)
            physical[start:end] = table.lookup(physical[start:end])
        if physical is not None:
            runner.positions[:total].copy_(torch.from_numpy(physical))


def install() -> None:
    """Wrap the V1 model runner's state update and input preparation (idempotent)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_exposst_hooked", False):
        return
    original_update = GPUModelRunner._update_states
    original_prepare = GPUModelRunner._prepare_inputs

    def _update_states(self, scheduler_output):
        hook = _hook_for(self)
        if hook is not None:
            hook.on_scheduler_output(scheduler_output)
        return original_update(self, scheduler_output)

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens_np, *args, **kwargs):
        result = original_prepare(self, scheduler_output, num_scheduled_tokens_np, *args, **kwargs)
        hook = _hook_for(self)
        if hook is not None:
            hook.rewrite(self, num_scheduled_tokens_np)
        return result

    GPUModelRunner._update_states = _update_states
    GPUModelRunner._prepare_inputs = _prepare_inputs
    GPUModelRunner._exposst_hooked = True


def _hook_for(runner: Any) -> PositionHook | None:
    """The runner's hook when the plugin is switched on for its engine, else None."""
    hook = runner.__dict__.get("_exposst_hook", False)
    if hook is False:
        from .plugin import is_enabled

        hook = PositionHook() if is_enabled(runner.vllm_config) else None
        if hook is not None:
            from . import lora_cpu_fix

            lora_cpu_fix.install()
        runner._exposst_hook = hook
    return hook
