"""Allocated positions on the worker side: one table per live ExPosST request.

vLLM computes ``positions = num_computed_tokens + arange`` in
``GPUModelRunner._prepare_inputs`` and uses those *physical* indices for the token
ids and the KV slot mapping.  After that method returns, :meth:`PositionHook.rewrite`
overwrites the positions handed to the model (``runner.positions``) for ExPosST
requests only
(the wrapping itself is :mod:`vllm_exposst.patch.worker`): in
Llama and Qwen2 they reach the rotary embedding alone, and attention stays causal
over physical order.  Ordinary requests keep vLLM's own values.

Each streaming chunk of a session carries, in ``SamplingParams.extra_args``,
``{"exposst": {"start": i, "positions": [...], "decode": d}}``: token indices
``i, i+1, ...`` of the request get ``positions``, and tokens generated after them get
``d, d+1, ...``.  The table is kept per request for its whole life, so recomputation
after preemption and chunked prefill replay the same positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

EXTRA_KEY = "exposst"


class PositionTable:
    """Positions of one request's tokens, by physical index.

    Kept in a growing array (capacity doubles), so a chunk costs its own length and a
    lookup its own tokens, however long the session has run."""

    def __init__(self) -> None:
        self.decode = 0
        self._size = 0  # tokens with a known position
        self._buffer = np.empty(0, dtype=np.int64)

    @property
    def known(self) -> np.ndarray:
        """The positions of tokens ``0 .. len(known) - 1`` (a view, not a copy)."""
        return self._buffer[: self._size]

    def update(self, start: int, positions: list[int], decode: int) -> None:
        """Tokens ``start...`` get ``positions``; tokens generated since the last chunk
        (indices between the known ones and ``start``) keep their decode positions."""
        end = start + len(positions)
        if end > len(self._buffer):
            grown = np.empty(max(end, 2 * len(self._buffer), 64), dtype=np.int64)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        gap = start - self._size
        if gap > 0:
            self._buffer[self._size : start] = np.arange(self.decode, self.decode + gap)
        self._buffer[start:end] = positions
        self._size = end
        self.decode = decode

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        known = self.known
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
        """Give ExPosST requests their allocated positions in ``runner.positions``.

        vLLM 0.32 computes the step's positions on the device; their values are the
        host-side ``num_computed_tokens_cpu[request] + arange``, so the physical
        positions are rebuilt here on the host, the ExPosST rows looked up, and the
        result written with one host-to-device copy.  Nothing is read back from the
        device (no synchronisation on a GPU).
        """
        if not self.tables:
            return
        counts = np.asarray(num_scheduled_tokens, dtype=np.int64)
        req_ids = runner.input_batch.req_ids[: len(counts)]
        rows = [
            (i, table)
            for i, req_id in enumerate(req_ids)
            if counts[i] and (table := self.tables.get(req_id)) is not None
        ]
        if not rows:
            return
        ends = np.cumsum(counts)
        starts = ends - counts
        total = int(ends[-1])
        computed = np.asarray(runner.input_batch.num_computed_tokens_cpu[: len(counts)])
        positions = np.repeat(computed.astype(np.int64) - starts, counts) + np.arange(total)
        for i, table in rows:
            start, end = int(starts[i]), int(ends[i])
            positions[start:end] = table.lookup(positions[start:end])
        runner.positions[:total].copy_(torch.from_numpy(positions))
