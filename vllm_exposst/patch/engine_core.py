"""Engine-core side patches: the V1 runner pin and the ``exposst_stats`` utility (ledger in
:mod:`vllm_exposst.patch`)."""

from __future__ import annotations

from typing import Any

from ..switch import is_enabled
from . import replace


def apply() -> None:
    from vllm.config import VllmConfig
    from vllm.v1.engine.core import EngineCore

    def pin_v1_runner(original: property) -> property:
        def use_v2_model_runner(self: Any) -> bool:
            return False if is_enabled(self) else original.fget(self)

        return property(use_v2_model_runner)

    def stats_utility(_: Any) -> Any:
        def exposst_stats(self: Any, request_ids: list[str] | None = None) -> dict:
            stats = getattr(self.scheduler, "exposst_stats", None)
            if stats is None:
                raise RuntimeError("ExPosST is not enabled in this engine (see --scheduler-cls)")
            return stats(request_ids)

        return exposst_stats

    replace(VllmConfig, "use_v2_model_runner", pin_v1_runner)
    replace(EngineCore, "exposst_stats", stats_utility)
