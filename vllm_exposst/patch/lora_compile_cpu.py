"""torch.compile for ExPosST engines that serve LoRA on the CPU (ledger in
:mod:`vllm_exposst.patch`).

vLLM 0.32's CPU platform turns compilation off whenever LoRA is enabled: it compiles
with ``DYNAMO_TRACE_ONCE`` (one trace, no guards), and its CPU LoRA ops read the
batch's adapters in Python, which one trace would freeze.  So ``vllm serve
--enable-lora`` ran eager while the same model merged ran compiled, faster per step
(docs/benchmarks.md).  Our fused projection runs under compilation as one opaque op
(``exposst::lora_linear_cpu``, :mod:`.lora_linear_cpu`) that reads the adapters at run
time, so an ExPosST engine keeps the compilation it was configured with when every
module LoRA wraps is a linear projection (``--lora-target-modules`` names only
those).  Otherwise, for other engines and under ``--enforce-eager``, vLLM's rule
stands.  Should another LoRA entry point be traced anyway, it raises instead of
freezing one batch's adapters into the graph.
"""

from __future__ import annotations

import logging
from typing import Any

from ..switch import is_enabled
from . import replace

logger = logging.getLogger("vllm.exposst")

# module names whose LoRA layers reach the punica wrapper only through add_lora_linear
LINEAR_PROJECTIONS = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
    }
)


def compiles_with_lora(vllm_config: Any) -> bool:
    """Whether this engine may keep torch.compile with LoRA on the CPU: ExPosST's
    scheduler, and LoRA restricted to linear projections (the fused op's path)."""
    lora = vllm_config.lora_config
    if lora is None or not is_enabled(vllm_config):
        return False
    targets = lora.target_modules
    return bool(targets) and set(targets) <= LINEAR_PROJECTIONS


def apply() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.platforms.cpu import CpuPlatform

    def keep_compilation(original: Any) -> Any:
        def check_and_update_config(cls: Any, vllm_config: Any) -> None:
            from vllm.config import CompilationMode

            compilation = vllm_config.compilation_config
            asked = compilation.mode
            original.__func__(cls, vllm_config)
            if not (asked == CompilationMode.VLLM_COMPILE and vllm_config.lora_config):
                return
            if compiles_with_lora(vllm_config) and compilation.mode == CompilationMode.NONE:
                compilation.mode = CompilationMode.DYNAMO_TRACE_ONCE
                logger.info("ExPosST: torch.compile kept with LoRA (fused op on the CPU)")
            elif is_enabled(vllm_config):
                logger.info(
                    "ExPosST: LoRA runs eager on the CPU; --lora-target-modules naming "
                    "only linear projections (%s) keeps torch.compile",
                    " ".join(sorted(LINEAR_PROJECTIONS)),
                )

        return classmethod(check_and_update_config)

    replace(CpuPlatform, "check_and_update_config", keep_compilation)
    for name in ("add_shrink", "add_expand", "add_lora_embedding", "add_lora_logits"):
        replace(PunicaWrapperCPU, name, _eager_only)


def _eager_only(original: Any) -> Any:
    """``original``, refusing to be traced (it reads the batch's adapters in Python)."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"vllm-exposst: PunicaWrapperCPU.{original.__name__} cannot run under "
                "torch.compile; restrict --lora-target-modules to linear projections "
                "or start with --enforce-eager"
            )
        return original(self, *args, **kwargs)

    return method
