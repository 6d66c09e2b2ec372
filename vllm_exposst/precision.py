"""Which dtype ExPosST engines run in.

vLLM's ``--dtype auto`` turns a float32 checkpoint into bfloat16 on the CPU.  ExPosST
engines on the CPU run float32 instead (docs/benchmarks.md, "Precision"): there the
engine equals the transformers reference decoder and a request translates the same
alone as beside other sessions; bfloat16 drifts by 0.1-0.25 in log-probability.
Other platforms keep vLLM's choice.  ``--dtype bfloat16`` (``dtype=`` in Python)
overrides it.  Core layer: imports nothing of ours.
"""

from __future__ import annotations

from typing import Any

CPU_DTYPE = "float32"


def platform_dtype() -> str:
    """What ``auto`` means for an ExPosST engine here: float32 on the CPU, else vLLM's own."""
    from vllm.platforms import current_platform

    return CPU_DTYPE if current_platform.is_cpu() else "auto"


def resolve_dtype(requested: Any) -> Any:
    """``requested`` unless it is ``auto``/None, else :func:`platform_dtype`."""
    if requested is None or (isinstance(requested, str) and requested.lower() == "auto"):
        return platform_dtype()
    return requested


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` or ``"float32"`` -> ``"float32"`` (for logs, stats and records)."""
    return str(dtype).removeprefix("torch.")


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or AMX): Linux flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
