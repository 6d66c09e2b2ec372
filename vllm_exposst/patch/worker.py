"""Worker side patch: allocated positions into vLLM's V1 model runner (ledger in
:mod:`vllm_exposst.patch`).

Each runner of an ExPosST engine gets a :class:`~vllm_exposst.positions.PositionHook`
on its first step; runners of other engines get None and run vLLM's code unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..positions import PositionHook
from ..switch import is_enabled
from . import lora_cpu, replace


def apply() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def update_states(original: Any) -> Any:
        def _update_states(self: Any, scheduler_output: Any) -> Any:
            hook = hook_for(self)
            if hook is not None:
                with profiled():
                    hook.on_scheduler_output(scheduler_output)
            return original(self, scheduler_output)

        return _update_states

    def prepare_inputs(original: Any) -> Any:
        def _prepare_inputs(
            self: Any, scheduler_output: Any, num_scheduled_tokens_np: Any, *args: Any, **kw: Any
        ) -> Any:
            result = original(self, scheduler_output, num_scheduled_tokens_np, *args, **kw)
            hook = hook_for(self)
            if hook is not None:
                with profiled():
                    hook.rewrite(self, num_scheduled_tokens_np)
            return result

        return _prepare_inputs

    replace(GPUModelRunner, "_update_states", update_states)
    replace(GPUModelRunner, "_prepare_inputs", prepare_inputs)


PROFILE_LABEL = "exposst::positions"  # a profiler range around the hook (only when profiling)


def profiled() -> Any:
    """A profiler range for the position hook while a profiler runs (eval/profile_step.py)."""
    import torch

    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(PROFILE_LABEL)
    return contextlib.nullcontext()


def hook_for(runner: Any) -> PositionHook | None:
    """The runner's hook when ExPosST is on for its engine, else None (decided once)."""
    hook = runner.__dict__.get("_exposst_hook", False)
    if hook is False:
        hook = PositionHook() if is_enabled(runner.vllm_config) else None
        if hook is not None:
            lora_cpu.activate()
        runner._exposst_hook = hook
    return hook
