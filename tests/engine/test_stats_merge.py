"""``merge_engine_stats``: one view of several data-parallel engines' counts."""

from __future__ import annotations

from vllm_exposst.engine.simul_engine import merge_engine_stats


def _stats(time: float, active: int, free: int, tokens: dict[str, int]) -> dict:
    return {
        "time": time,
        "active_sessions": active,
        "waiting_sessions": 1,
        "running_requests": active,
        "waiting_requests": 0,
        "total_blocks": 100,
        "free_blocks": free,
        "tokens_computed": tokens,
    }


def test_counts_are_summed_tables_merged_and_each_engine_kept():
    first, second = _stats(5.0, 2, 60, {"a": 10}), _stats(7.0, 3, 40, {"b": 20, "c": 1})
    merged = merge_engine_stats([first, second])
    assert merged["time"] == 7.0
    assert merged["active_sessions"] == 5 and merged["waiting_sessions"] == 2
    assert merged["running_requests"] == 5 and merged["waiting_requests"] == 0
    assert merged["total_blocks"] == 200 and merged["free_blocks"] == 100
    assert merged["tokens_computed"] == {"a": 10, "b": 20, "c": 1}
    assert merged["engines"] == [first, second]
