"""The position hook's per-step work reads nothing back from the device (issue 14, item 3).

``PositionHook.rewrite`` runs after vLLM's ``_prepare_inputs`` each step.  On a GPU any
read of ``runner.positions`` (``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()``) would
be a device-to-host copy and a synchronisation.  Here ``runner.positions`` lives on
PyTorch's ``meta`` device: writing into it works, every read raises.  The values
written are checked on a second runner whose buffer is a CPU tensor, against the
physical positions ``num_computed_tokens + arange`` mapped through each table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_exposst.positions import PositionHook, PositionTable


class _Batch:
    def __init__(self, req_ids: list[str], computed: list[int]) -> None:
        self.req_ids = req_ids
        self.num_computed_tokens_cpu = np.asarray(computed + [0] * 4, dtype=np.int32)


class _Runner:
    """What ``rewrite`` touches of vLLM's V1 runner: ``input_batch`` and ``positions``."""

    def __init__(self, device: str, req_ids: list[str], computed: list[int]) -> None:
        self.input_batch = _Batch(req_ids, computed)
        self.positions = torch.full((64,), -1, dtype=torch.int64, device=device)


def _hook() -> PositionHook:
    """Two ExPosST requests (a, c) beside an ordinary one (b)."""
    hook = PositionHook()
    hook.tables["a"] = _table([0, 1, 2, 3, 4, 6, 7], decode=8)
    hook.tables["c"] = _table([0, 1, 5, 6, 2], decode=9)
    return hook


def _table(known: list[int], decode: int) -> PositionTable:
    table = PositionTable()
    table.update(0, known, decode)
    return table


CASE = {
    "req_ids": ["a", "b", "c"],
    "computed": [5, 7, 3],  # tokens already in the cache per request
    "scheduled": np.asarray([4, 2, 3]),  # tokens this step
}


def _expected() -> np.ndarray:
    hook = _hook()
    out = []
    for req_id, done, count in zip(CASE["req_ids"], CASE["computed"], CASE["scheduled"]):
        physical = np.arange(done, done + count)
        table = hook.tables.get(req_id)
        out.extend(physical if table is None else table.lookup(physical))
    return np.asarray(out)


def test_rewrite_reads_nothing_from_the_device_buffer():
    runner = _Runner("meta", CASE["req_ids"], CASE["computed"])
    with pytest.raises((NotImplementedError, RuntimeError, TypeError)):
        runner.positions.cpu()  # the stub is honest: a device read fails
    _hook().rewrite(runner, CASE["scheduled"])  # would raise on any read-back


def test_rewrite_writes_the_allocated_positions_with_physical_ones_elsewhere():
    runner = _Runner("cpu", CASE["req_ids"], CASE["computed"])
    _hook().rewrite(runner, CASE["scheduled"])
    total = int(CASE["scheduled"].sum())
    expected = _expected()
    np.testing.assert_array_equal(runner.positions[:total].numpy(), expected)
    # request a: computed 5, tokens 5..8 -> known[5], known[6], then decode 8, 9
    np.testing.assert_array_equal(expected[:4], [6, 7, 8, 9])
    np.testing.assert_array_equal(expected[4:6], [7, 8])  # b: vLLM's own (physical)
    np.testing.assert_array_equal(expected[6:], [6, 2, 9])  # c: known[3], known[4], decode
    assert (runner.positions[total:] == -1).all()  # nothing past the step's tokens


def test_rewrite_leaves_steps_without_exposst_requests_alone():
    runner = _Runner("meta", ["b"], [7])
    PositionHook().rewrite(runner, np.asarray([2]))  # no tables: returns at once
    cpu = _Runner("cpu", ["b"], [7])
    _hook().rewrite(cpu, np.asarray([2]))  # tables, but none scheduled this step
    assert (cpu.positions == -1).all()


def test_the_stub_has_the_shape_of_vllms_v1_runner():
    """The stub's two attributes are what vLLM 0.32's V1 runner has: a device tensor
    ``positions`` and the host array ``input_batch.num_computed_tokens_cpu``."""
    import inspect

    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner_init = inspect.getsource(GPUModelRunner.__init__)
    assert "self.positions = torch.zeros(" in runner_init
    batch_init = inspect.getsource(InputBatch.__init__)
    assert "self.num_computed_tokens_cpu = self.num_computed_tokens_cpu_tensor.numpy()" in (
        batch_init
    )


class _ListTable:
    """The table as plain lists, rebuilt from scratch: the reference for PositionTable."""

    def __init__(self) -> None:
        self.known: list[int] = []
        self.decode = 0

    def update(self, start: int, positions: list[int], decode: int) -> None:
        gap = start - len(self.known)
        if gap > 0:
            self.known.extend(range(self.decode, self.decode + gap))
        del self.known[start:]
        self.known.extend(positions)
        self.decode = decode

    def lookup(self, indices: np.ndarray) -> list[int]:
        n = len(self.known)
        return [self.known[i] if i < n else self.decode + i - n for i in indices.tolist()]


def test_position_table_equals_a_list_rebuilt_every_chunk():
    """Random sessions: chunks after generated tokens, rewinds (preemption), long runs."""
    rng = np.random.default_rng(22)
    for _ in range(50):
        table, reference = PositionTable(), _ListTable()
        length = 0
        for _ in range(int(rng.integers(1, 40))):
            start = int(rng.integers(0, length + 8))  # past the end: tokens generated since
            positions = rng.integers(0, 500, int(rng.integers(0, 30))).tolist()
            decode = int(rng.integers(0, 600))
            table.update(start, positions, decode)
            reference.update(start, positions, decode)
            length = start + len(positions)
            indices = rng.integers(0, length + 20, int(rng.integers(1, 40)))
            assert table.lookup(indices).tolist() == reference.lookup(indices)
            assert table.known.tolist() == reference.known
