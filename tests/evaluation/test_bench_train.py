"""eval/bench_train.py: its variant grammar, and that each run trains the way its
variant says (attention kernel, dropout masks, dropout off and back on), as the record
reads the model afterwards."""

from __future__ import annotations

import argparse
import json

import pytest

from vllm_exposst import models

from . import eval_scripts


def load_script():
    return eval_scripts.load_script("bench_train")


def test_the_variant_grammar():
    variant = load_script().Variant.parse
    v = variant("fast/bfloat16/sdpa/torchmask/top15/compile")
    assert (v.forward, v.precision, v.attention, v.dropout, v.top_layers, v.compile) == (
        "fast",
        "bfloat16",
        "sdpa",
        "torchmask",
        15,
        True,
    )
    assert str(v) == "fast/bfloat16/sdpa/torchmask/top15/compile"
    plain = variant("plain/float32")
    assert (plain.attention, plain.dropout, plain.top_layers, plain.compile) == (
        "auto",
        "auto",
        None,
        False,
    )
    for bad in ["fast", "quick/float32", "fast/float32/torchmask/sdpa", "fast/float32/top2/nodrop",
                "fast/float32/nodrop/fastmask"]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            variant(bad)


def test_each_run_trains_as_its_variant_says(tmp_path, model_cache):
    script = load_script()
    out = tmp_path / "bench.json"
    model = str(models.tiny_model("llama", model_cache))
    variants = [
        "plain/float32",
        "fast/float32/sdpa/torchmask",
        "fast/float32/nodrop",
        "fast/float32",
    ]
    assert script.main(
        ["--model", model, "--pairs", "40", "--steps", "1", "--repeats", "1", "--threads", "1",
         "--out", str(out), "--variants", *variants]
    ) == 0  # fmt: skip
    runs = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(runs) == set(variants)
    assert (runs["plain/float32"]["attention"], runs["plain/float32"]["dropout_masks"]) == (
        "sdpa",
        "torch",
    )
    sdpa = runs["fast/float32/sdpa/torchmask"]
    assert (sdpa["attention"], sdpa["dropout_masks"]) == ("sdpa", "torch")
    assert (runs["fast/float32"]["attention"], runs["fast/float32"]["dropout_masks"]) == (
        "eager",
        "fast",
    )
    # the warm-up ran nodrop just before fast/float32: the dropout came back
    assert runs["fast/float32/nodrop"]["lora_dropout"] == 0.0
    assert runs["fast/float32"]["lora_dropout"] == runs["plain/float32"]["lora_dropout"] == 0.05
    assert all(r["pairs_per_second"] > 0 and r["steps"] == 1 for r in runs.values())
