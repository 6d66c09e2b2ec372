"""Plugin switch, version check and the position table (no engine)."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_exposst import plugin
from vllm_exposst.hook import PositionHook, PositionTable
from vllm_exposst.scheduler import external_id


class _Config:
    def __init__(self, scheduler_cls):
        self.scheduler_config = type("S", (), {"scheduler_cls": scheduler_cls})()


def test_plugin_is_inert_unless_the_exposst_scheduler_is_chosen():
    from vllm_exposst.scheduler import ExposstScheduler

    assert not plugin.is_enabled(_Config(None))
    assert not plugin.is_enabled(_Config("vllm.v1.core.sched.async_scheduler.AsyncScheduler"))
    assert plugin.is_enabled(_Config(plugin.SCHEDULER_CLS))
    assert plugin.is_enabled(_Config(ExposstScheduler))

    class Custom(ExposstScheduler):
        pass

    assert plugin.is_enabled(_Config(Custom))


def test_an_unsupported_vllm_fails_loudly(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    with pytest.raises(plugin.UnsupportedVllmError, match="0.32"):
        plugin.check_vllm_version()


def test_position_table_replays_chunks_and_generated_tokens():
    table = PositionTable()
    table.update(0, [0, 1, 2, 3, 4, 6], decode=7)  # prefix, 2 source, header; then t1...
    np.testing.assert_array_equal(table.lookup(np.arange(9)), [0, 1, 2, 3, 4, 6, 7, 8, 9])
    # turn ended after t1, t2 were computed (indices 6, 7); next chunk: source at 5
    table.update(8, [5], decode=10)
    np.testing.assert_array_equal(table.lookup(np.arange(10)), [0, 1, 2, 3, 4, 6, 7, 8, 5, 10])
    # the whole history again, as after preemption
    np.testing.assert_array_equal(table.lookup(np.arange(3)), [0, 1, 2])


def test_hook_tables_follow_scheduler_output():
    hook = PositionHook()
    params = type(
        "P", (), {"extra_args": {"exposst": {"start": 0, "positions": [0, 1, 5], "decode": 9}}}
    )()
    new = type("N", (), {"req_id": "r1", "sampling_params": params})()
    plain = type("N", (), {"req_id": "r2", "sampling_params": type("P", (), {})()})()
    output = type("O", (), {"finished_req_ids": set(), "scheduled_new_reqs": [new, plain]})()
    hook.on_scheduler_output(output)
    assert set(hook.tables) == {"r1"}
    output.finished_req_ids, output.scheduled_new_reqs = {"r1"}, []
    hook.on_scheduler_output(output)
    assert hook.tables == {}


def test_external_request_id():
    assert external_id("exposst-abc-123456-0f1e2d3c") == "exposst-abc-123456"
    assert external_id("plain") == "plain"


def test_lora_ops_give_tokens_without_an_adapter_no_contribution():
    """vLLM 0.32's torch LoRA ops read index -1 as the last adapter slot; the fix zeroes it."""
    import torch

    from vllm_exposst import lora_cpu_fix

    torch.manual_seed(0)
    weights = torch.randn(2, 1, 4, 6)  # 2 adapter slots, rank 4, hidden 6
    inputs = torch.randn(3, 6)
    indices = torch.tensor([-1, 0, 1])
    out = torch.zeros(3, 4)
    lora_cpu_fix.bgmv_shrink(inputs, weights, out, indices, 0.5)
    assert torch.all(out[0] == 0)
    torch.testing.assert_close(out[1], 0.5 * weights[0, 0] @ inputs[1])
    torch.testing.assert_close(out[2], 0.5 * weights[1, 0] @ inputs[2])
    expand = torch.randn(2, 1, 6, 4)
    base = torch.ones(3, 6)
    lora_cpu_fix.bgmv_expand(out, expand, base, indices, add_inputs=True)
    torch.testing.assert_close(base[0], torch.ones(6))
    torch.testing.assert_close(base[1], 1 + expand[0, 0] @ out[1])


def test_exposst_engines_pin_the_v1_model_runner():
    from vllm.config import VllmConfig

    plugin.register()  # idempotent; vLLM also calls it when it loads plugins
    assert VllmConfig.use_v2_model_runner.fget(_Config(plugin.SCHEDULER_CLS)) is False
