"""eval/profile_step.py's trace split: exclusive CPU time per category from nested
profiler ranges, checked on a hand-written chrome trace whose answer is known."""

from __future__ import annotations

import gzip
import json

from . import eval_scripts


def load_script():
    return eval_scripts.load_script("profile_step")


def span(name: str, ts: float, dur: float, cat: str = "cpu_op", tid: int = 1) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_exclusive_times_per_category(tmp_path):
    events = [
        # a step of 100 us: 10 us of runner Python around its ops
        span("execute_context_0(0)_generation_8(8)", 0, 100, cat="user_annotation"),
        span("exposst::positions", 1, 6, cat="user_annotation"),
        span("aten::copy_", 2, 4),  # inside the hook: counts as positions
        span("_C::onednn_mm", 10, 40),
        span("exposst::lora", 50, 20, cat="user_annotation"),
        span("aten::addmm", 52, 15),  # a LoRA product: lora, not matmul
        span("_C::cpu_attention_with_kv_cache", 70, 12),
        span("aten::silu", 82, 3),
        span("_C::greedy_argmax", 90, 2),
        # a second step on another thread, only a matmul
        span("execute_context_1(1)_generation_0(0)", 0, 50, cat="user_annotation", tid=2),
        span("aten::mm", 5, 45, tid=2),
        {"ph": "M", "name": "process_name"},
    ]
    path = tmp_path / "rank0.1.pt.trace.json.gz"
    with gzip.open(path, "wt") as out:
        json.dump({"traceEvents": events}, out)
    split = load_script().split_trace(path)
    exclusive, steps, total = split.exclusive, split.steps, split.total
    assert steps == 2 and total == 150
    # the first step computed no prompt tokens, the second one (1 token of prefill)
    assert (split.decode_steps, split.decode_total) == (1, 100)
    assert split.decode_ms_per_step() == 0.1
    assert exclusive == {
        "runner": 100 - 6 - 40 - 20 - 12 - 3 - 2 + 50 - 45,
        "positions": 6,
        "matmul": 40 + 45,
        "lora": 20,
        "attention": 12,
        "other ops": 3,
        "sampling": 2,
    }
