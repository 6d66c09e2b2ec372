"""The switch: ExPosST is on exactly for engines with its scheduler; the version gate."""

from __future__ import annotations

import pytest

from vllm_exposst import switch


class _Config:
    def __init__(self, scheduler_cls):
        self.scheduler_config = type("S", (), {"scheduler_cls": scheduler_cls})()


def test_plugin_is_inert_unless_the_exposst_scheduler_is_chosen():
    from vllm_exposst.scheduler import ExposstScheduler

    assert not switch.is_enabled(_Config(None))
    assert not switch.is_enabled(_Config("vllm.v1.core.sched.async_scheduler.AsyncScheduler"))
    assert switch.is_enabled(_Config(switch.SCHEDULER_CLS))
    assert switch.is_enabled(_Config(ExposstScheduler))

    class Custom(ExposstScheduler):
        pass

    assert switch.is_enabled(_Config(Custom))

    from vllm.v1.core.sched.scheduler import Scheduler

    assert not switch.is_enabled(_Config(Scheduler))


def test_the_scheduler_class_name_names_the_real_class():
    from vllm_exposst.scheduler import ExposstScheduler

    assert f"{ExposstScheduler.__module__}.{ExposstScheduler.__qualname__}" == switch.SCHEDULER_CLS


def test_an_unsupported_vllm_fails_loudly(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    with pytest.raises(switch.UnsupportedVllmError, match="0.32"):
        switch.check_vllm_version()
