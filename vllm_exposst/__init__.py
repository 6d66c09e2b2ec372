"""ExPosST simultaneous translation for vLLM: layout, policies, prompts, reference decoder."""

from .layout import (
    ExposstAllocator,
    PositionLimitError,
    ShiftAllocator,
    allocate,
    allocate_mode,
    allocate_offline,
    allocate_shift,
    make_allocator,
)
from .policies import Policy, PolicyState, parse_policy, parse_policy_mix
from .prompts import PromptTemplate, build_prompt

__version__ = "0.1.0"
__all__ = [
    "ExposstAllocator",
    "Policy",
    "PolicyState",
    "PositionLimitError",
    "PromptTemplate",
    "ShiftAllocator",
    "allocate",
    "allocate_mode",
    "allocate_offline",
    "allocate_shift",
    "build_prompt",
    "make_allocator",
    "parse_policy",
    "parse_policy_mix",
]
