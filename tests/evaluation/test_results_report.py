"""eval/results_report.py --cpu: the CPU adapters' runs merged with the first results' shift."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from vllm_exposst.evaluation.record import write_record

from .eval_scripts import load_script

report = load_script("results_report")


def row(mode: str, policy: str, bleu: float) -> dict:
    return {
        "mode": mode,
        "policy": policy,
        "BLEU": bleu,
        "LAAL": 1.0 + float(policy[-1]) if policy != "offline" else 12.0,
        "tokens_computed": 50.0,
        "tokens_minimum": 40.0,
        "seconds_per_sentence": 1.0,
    }


def test_cpu_curves_rename_the_runs_and_keep_only_the_shift_baseline(tmp_path):
    evals, out = tmp_path / "evals", tmp_path / "docs"
    cpu = evals / "cpu" / "m30k"
    write_record(
        cpu / "exposst-cpu" / "record.json",
        [row("exposst", "wait-1", 9.0), row("exposst", "wait-3", 15.0)],
        adapter="exposst-cpu",
        start=0,
        sentences=3,
    )
    write_record(
        cpu / "offline-cpu-2" / "record.json",
        [row("offline", "offline", 17.0), row("recompute", "wait-3", 16.0)],
        adapter="offline-cpu-2",
        start=0,
        sentences=2,  # recompute runs fewer sentences than ExPosST
    )
    instances = [  # ExPosST's wait-3 outputs; the third is outside recompute's two
        ("ein Hund läuft im Park", "ein Hund rennt durch den Park"),
        ("zwei Kinder spielen", "zwei Kinder spielen im Sand"),
        ("eine Frau liest ein Buch", "eine Frau liest ein Buch"),
    ]
    log = cpu / "exposst-cpu" / "exposst" / "wait-3" / "instances.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "".join(
            json.dumps({"index": i, "prediction": hyp, "reference": ref}) + "\n"
            for i, (hyp, ref) in enumerate(instances)
        )
    )
    first_results = [
        row("shift FT + shift", "wait-3", 6.8),
        row("offline SFT + recompute", "wait-3", 14.3),  # its adapter is gone: left out
    ]
    write_record(out / "m30k.json", first_results)

    report.main(["--cpu", str(evals), str(tmp_path / "adapters"), str(out)])

    merged = json.loads((out / "m30k_cpu.json").read_text())
    got = {(r["mode"], r["policy"]): r["BLEU"] for r in merged["results"]}
    assert got == {
        ("ExPosST FT (CPU, two stages) + exposst", "wait-1"): 9.0,
        ("ExPosST FT (CPU, two stages) + exposst", "wait-3"): 15.0,
        ("offline", "offline"): 17.0,
        ("offline SFT (CPU) + recompute", "wait-3"): 16.0,
        ("shift FT + shift (first results)", "wait-3"): 6.8,
    }
    assert [run.get("adapter") for run in merged["runs"][:2]] == ["exposst-cpu", "offline-cpu-2"]
    for plot in ("m30k_cpu_quality_latency.png", "m30k_cpu_cost.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert not (out / "iwslt_cpu.json").exists()  # no runs on that slice: nothing written

    # ExPosST on recompute's sentences only: BLEU of the first two outputs
    (same,) = merged["same"]
    two = instances[:2]
    expected = sacrebleu.corpus_bleu([h for h, _ in two], [[r for _, r in two]]).score
    assert same["policy"] == "wait-3" and same["sentences"] == "[0:2]"
    assert same["exposst_BLEU"] == pytest.approx(expected)
    assert same["exposst_BLEU"] < 100  # the perfect third sentence is left out
    assert same["recompute_BLEU"] == 16.0
    assert same["ratio"] == pytest.approx(expected / 16.0)
