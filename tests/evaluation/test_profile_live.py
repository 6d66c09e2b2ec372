"""eval/profile_live.py's per-round step ratios, on rows whose answer is worked out here."""

from __future__ import annotations

from . import eval_scripts


def row(variant: str, step: float, round_: int, dtype: str = "float32") -> dict:
    return {
        "variant": variant,
        "mode": "eager",
        "dtype": dtype,
        "block_size": 32,
        "round": round_,
        "decode_step_median_ms": step,
    }


def test_each_round_is_compared_with_its_own_merged_engine():
    script = eval_scripts.load_script("profile_live")
    rows = [
        row("adapter", 60.0, 0),
        row("merged", 40.0, 0),  # 1.5 in round 0 (the adapter's run was disturbed)
        row("adapter", 33.0, 1),
        row("merged", 30.0, 1),  # 1.1 in round 1: the machine got faster for both
        row("adapter", 46.0, 2),
        row("merged", 44.0, 2),  # 1.045
        row("adapter", 20.0, 0, dtype="bfloat16"),  # no bfloat16 merged engine: no ratio
    ]
    (summary,) = script.step_ratios(rows)
    assert (summary["variant"], summary["against"], summary["dtype"]) == (
        "adapter",
        "merged",
        "float32",
    )
    assert summary["per_round"] == [60 / 40, 33 / 30, 46 / 44]
    # the median of the rounds' ratios, not the ratio of the medians (46 / 40 = 1.15)
    assert summary["median"] == 33 / 30


def test_merged_is_the_baseline_where_base_also_ran():
    script = eval_scripts.load_script("profile_live")
    rows = [row("base", 20.0, 0), row("merged", 40.0, 0), row("adapter", 44.0, 0)]
    ratios = {(s["variant"], s["against"]): s["median"] for s in script.step_ratios(rows)}
    assert ratios == {("adapter", "merged"): 44 / 40, ("base", "merged"): 20 / 40}
