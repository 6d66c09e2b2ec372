"""Evaluation suite: metrics against hand computation and SimulEval, agent against runner.

The engine tests use a tiny random Llama: the translations are noise, but both
paths must produce the same words with the same delays, and the scores must be
what SimulEval computes on them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_exposst import models
from vllm_exposst.evaluation import agents, cli, logs, metrics
from vllm_exposst.evaluation.data import Pair, load_pairs
from vllm_exposst.evaluation.runner import RunSettings, RunSpec, parse_policies, plan_runs

from ..conftest import engine_for_module, write_test_set

REPO = Path(__file__).resolve().parents[2]
PAIRS = [
    ("a man walks in the park", "ein mann geht im park"),
    ("two dogs play with a red ball near the tree", "zwei hunde spielen mit einem roten ball"),
    ("the old woman sits on a small table", "die alte frau sitzt auf einem kleinen tisch"),
    ("three children are eating", "drei kinder essen"),
    ("a black cat looks at the water", "eine schwarze katze schaut auf das wasser"),
]


def toy(delays: list[int], source_words: int, prediction_words: int, reference_words: int):
    return metrics.Hypothesis(
        index=0,
        source=" ".join(f"s{i}" for i in range(source_words)),
        reference=" ".join(f"r{i}" for i in range(reference_words)),
        prediction=" ".join(f"t{i}" for i in range(prediction_words)),
        delays=delays,
        elapsed=[0.0] * len(delays),
    )


# -- metrics, no engine ---------------------------------------------------------------
def test_wait_k_toy_latency_equals_hand_computation():
    """wait-2 on 6 source words, 6 target words: every lag is 2 (LAAL, AL, DAL, ATD)."""
    hyp = toy([2, 3, 4, 5, 6, 6], source_words=6, prediction_words=6, reference_words=6)
    scores = metrics.latency_scores(metrics.simuleval_instances([hyp]))
    # LAAL/AL: gamma = 6/6; terms d_i - (i-1) until d_i = 6: 2,2,2,2,2 -> 10/5
    assert scores["LAAL"] == pytest.approx(10 / 5)
    assert scores["AL"] == pytest.approx(10 / 5)
    # AP: sum of delays / (|X| |Y|)
    assert scores["AP"] == pytest.approx((2 + 3 + 4 + 5 + 6 + 6) / 36)
    # DAL: g' = 2,3,4,5,6,7 (the last one pushed by 1/gamma); minus (i-1): 2 each
    assert scores["DAL"] == pytest.approx(12 / 6)
    # ATD (text, every word lasts 1): target word t ends at max(d_t, end of word t-1) + 1,
    # i.e. at 3, 4, 5, 6, 7, 8; the source word it is matched with (word t) ends at t
    ends = [3, 4, 5, 6, 7, 8]
    assert scores["ATD"] == pytest.approx(sum(e - t for t, e in enumerate(ends, 1)) / 6)


def test_laal_uses_the_longer_hypothesis_where_al_does_not():
    """8 words against a 4-word reference on 4 source words (delays 1,1,2,2,3,3,4,4)."""
    hyp = toy([1, 1, 2, 2, 3, 3, 4, 4], source_words=4, prediction_words=8, reference_words=4)
    scores = metrics.latency_scores(metrics.simuleval_instances([hyp]))
    # LAAL: gamma = max(8, 4) / 4 = 2: terms 1, .5, 1, .5, 1, .5, 1 (stop at d = 4)
    assert scores["LAAL"] == pytest.approx(5.5 / 7)
    # AL: gamma = 4 / 4 = 1: terms 1, 0, 0, -1, -1, -2, -2
    assert scores["AL"] == pytest.approx(-5 / 7)


def test_computation_aware_delays_add_rate_times_seconds():
    hyp = toy([2, 3, 4], source_words=4, prediction_words=3, reference_words=3)
    hyp.elapsed = [0.4, 1.0, 2.0]
    assert metrics.ca_delays(hyp.delays, hyp.elapsed, 2.5) == pytest.approx([3.0, 5.5, 9.0])
    scores = metrics.score_run([hyp], rate=2.5)
    # LAAL on 3, 5.5, 9 with gamma = 3/4: 3 - 0, 5.5 - 4/3 (stop: 5.5 >= 4)
    assert scores["CA_LAAL"] == pytest.approx((3 + 5.5 - 4 / 3) / 2)
    assert scores["CA_LAAL"] > scores["LAAL"]


def test_hypothesis_needs_one_delay_per_word():
    with pytest.raises(ValueError, match="target words"):
        toy([1, 2], source_words=3, prediction_words=3, reference_words=3)


def test_instances_log_scores_like_simuleval_score_only(tmp_path):
    """SimulEval's own --score-only on our instances.log gives our numbers."""
    hyps = scored_hypotheses()
    ours = metrics.score_run(hyps, rate=2.5)
    logs.write_instances(tmp_path / "instances.log", hyps, rate=2.5)
    logs.write_config(tmp_path)
    argv = ["--score-only", "--output", str(tmp_path), "--quality-metrics", "BLEU"]
    argv += ["--latency-metrics", "LAAL", "AL", "AP", "DAL"]
    from simuleval.evaluator import build_evaluator

    evaluator = build_evaluator(agents.simuleval_args(argv))
    latency, quality = evaluator.latency, evaluator.quality
    for name in ("LAAL", "AL", "AP", "DAL"):
        assert latency[name] == pytest.approx(ours[name], abs=1e-12), name
    assert quality["BLEU"] == pytest.approx(ours["BLEU"], abs=1e-12)
    # --computation-aware makes SimulEval score every metric on "elapsed" (LAAL too)
    aware = build_evaluator(agents.simuleval_args([*argv, "--computation-aware"])).latency
    assert aware["LAAL_CA"] == pytest.approx(ours["CA_LAAL"], abs=1e-12)
    assert aware["LAAL"] == pytest.approx(ours["CA_LAAL"], abs=1e-12)


def scored_hypotheses() -> list[metrics.Hypothesis]:
    return [
        metrics.Hypothesis(
            i, src, ref, " ".join(ref.split()[:-1]) + " x", delays, [0.1 * d for d in delays]
        )
        for i, ((src, ref), delays) in enumerate(
            zip(PAIRS, [[1, 2, 3, 4, 5], [2, 2, 4, 6, 8, 9, 9], [3] * 8, [4, 4, 4], [1] * 7])
        )
    ]


def test_omnisteval_scores_our_instances_log_like_us(tmp_path):
    """OmniSTEval's own CLI on instances.log and references.txt gives our BLEU, chrF,
    LAAL and computation-aware LAAL."""
    hyps = scored_hypotheses()
    ours = metrics.score_run(hyps, rate=2.5)
    log = logs.write_instances(tmp_path / "instances.log", hyps, rate=2.5)
    refs = logs.write_references(tmp_path / "references.txt", hyps)
    out = tmp_path / "omni"
    command = [sys.executable, "-m", "omnisteval.cli", "shortform", "--hypothesis_file", str(log)]
    command += ["--ref_sentences_file", str(refs), "--word_level", "--output_folder", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    rows = [line.split("\t") for line in (out / "scores.tsv").read_text().splitlines()[1:]]
    theirs = {name: value for name, value in rows}
    assert float(theirs["BLEU"]) == pytest.approx(ours["BLEU"], abs=1e-3)
    assert float(theirs["chrF"]) == pytest.approx(ours["chrF"], abs=1e-3)
    assert float(theirs["LAAL (CU)"]) == pytest.approx(ours["LAAL"], abs=1e-3)
    assert float(theirs["LAAL (CA)"]) == pytest.approx(ours["CA_LAAL"], abs=1e-3)


def test_simulstream_reads_our_metrics_log(tmp_path):
    """simulstream's LogReader rebuilds each sentence's text and delays from our log."""
    from simulstream.config import yaml_config
    from simulstream.metrics.readers import LogReader

    hyps = scored_hypotheses()
    log = logs.write_simulstream(tmp_path / "simulstream.jsonl", hyps, rate=2.5)
    reader = LogReader(yaml_config(str(log.with_suffix(".yaml"))), str(log))
    outputs = reader.final_outputs_and_latencies()
    assert list(outputs) == [str(h.index) for h in hyps]
    for hyp in hyps:
        out = outputs[str(hyp.index)]
        assert out.final_text == hyp.prediction
        assert out.ideal_delays == pytest.approx([d / 2.5 for d in hyp.delays])
        ca = metrics.ca_delays(hyp.delays, hyp.elapsed, 2.5)
        assert out.computational_aware_delays == pytest.approx([c / 2.5 for c in ca])


def test_quality_scores_match_sacrebleu_and_carry_signatures():
    import sacrebleu

    hyps = ["ein mann geht im park", "zwei hunde spielen"]
    refs = ["ein mann geht in den park", "zwei hunde spielen mit einem ball"]
    scores = metrics.quality_scores(hyps, refs)
    assert scores["BLEU"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrF"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in scores["bleu_signature"] and "nc:6" in scores["chrf_signature"]


def test_parse_policies_and_plan():
    assert parse_policies("wait-1,3,5") == ["wait-1", "wait-3", "wait-5"]
    assert parse_policies("token-wait-2,4,read-2/write-1") == [
        "token-wait-2",
        "token-wait-4",
        "read-2/write-1",
    ]
    with pytest.raises(ValueError):
        parse_policies("3,wait-1")
    with pytest.raises(ValueError):
        parse_policies("wait-x")
    runs = plan_runs(["exposst", "offline", "shift"], ["wait-1", "wait-3"])
    assert [(r.mode, r.policy) for r in runs] == [
        ("exposst", "wait-1"),
        ("exposst", "wait-3"),
        ("offline", "offline"),
        ("shift", "wait-1"),
        ("shift", "wait-3"),
    ]
    assert RunSpec("shift", "read-2/write-1").folder == "shift/read-2_write-1"
    with pytest.raises(ValueError):
        plan_runs(["fast"], ["wait-1"])


def test_load_pairs_slices_and_checks(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo words\nthree\n")
    tgt.write_text("eins\nzwei\ndrei\n")
    assert load_pairs(src, tgt, start=1, limit=5) == [
        Pair(1, "two words", "zwei"),
        Pair(2, "three", "drei"),
    ]
    tgt.write_text("eins\n")
    with pytest.raises(ValueError, match="not parallel"):
        load_pairs(src, tgt)


def test_word_splitter_marks_words_that_go_on_after_a_read():
    W = agents.WrittenWord
    words = agents.WordSplitter()
    assert words.extend("Ein Mann", delay=1) == [W("Ein", 1), W("Mann", 1)]
    assert words.extend("es geht", delay=2) == [W("es", 2, continues=True), W("geht", 2)]
    assert words.extend("", delay=2) == []
    assert words.extend(" ü", delay=3) == [W("ü", 3)]
    assert words.extend("ber.", delay=4) == [W("ber.", 4, continues=True)]
    assert words.text == "Ein Mannes geht über."
    merged = agents.merge_continuations(
        [W("Ein", 1), W("Mann", 1), W("es", 2, True), W("geht", 2), W("ü", 3), W("ber.", 4, True)]
    )
    assert merged == [("Ein", 1), ("Mannes", 1), ("geht", 2), ("über.", 3)]
    assert " ".join(text for text, _ in merged) == words.text


def test_engine_options_serve_an_adapter_as_lora(tmp_path, model_cache, monkeypatch):
    from vllm_exposst.evaluation.runtime import ADAPTER_NAME, engine_options

    monkeypatch.setenv("VLLM_EXPOSST_CACHE", str(model_cache))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    options = engine_options("tiny-llama", adapter, max_model_len=4096)
    assert options["enable_lora"] and options["lora_modules"] == {ADAPTER_NAME: str(adapter)}
    assert options["max_lora_rank"] == 16  # the smallest rank vLLM allows that holds 12
    assert options["max_model_len"] == 1024  # the tiny model's max_position_embeddings
    assert options["enable_prefix_caching"] is False
    assert options["lora_target_modules"] is None  # the config names none: every module
    targets = {"r": 8, "target_modules": ["v_proj", "q_proj", "down_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(targets))
    options = engine_options("tiny-llama", adapter)
    assert options["lora_target_modules"] == ["down_proj", "q_proj", "v_proj"]
    with pytest.raises(FileNotFoundError):
        engine_options("tiny-llama", tmp_path / "missing")


def test_cli_rejects_a_non_parallel_test_set(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.de").write_text("eins\n")
    argv = ["--source", str(tmp_path / "a.en"), "--target", str(tmp_path / "a.de")]
    assert cli.main(argv) == 2
    assert "not parallel" in capsys.readouterr().err


# -- the engine ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_path(model_cache):
    return models.tiny_model("llama", model_cache)


@pytest.fixture(scope="module")
def engine(engine_loop, tiny_path):
    yield from engine_for_module(
        engine_loop, tiny_path, max_num_seqs=8, enable_prefix_caching=False
    )


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_test_set(tmp_path_factory.mktemp("data"), PAIRS)


CAP = 20
SETTINGS = RunSettings(slot_len=3, max_target_tokens=CAP, concurrency=4)
AGENT_RUNS = [
    ("exposst", "wait-1"),
    ("exposst", "wait-3"),
    ("shift", "read-2/write-1"),
    ("exposst", "token-wait-2"),
]


@pytest.fixture(scope="module")
def runner_rows(engine, engine_loop, data_files, tmp_path_factory):
    """exposst-eval's code path on the fixture engine: every mode, wait-1 and wait-3."""
    out = tmp_path_factory.mktemp("eval")
    pairs = load_pairs(*data_files)
    runs = plan_runs(["exposst", "shift", "recompute", "offline"], ["wait-1", "wait-3"])
    runs += [RunSpec("shift", "read-2/write-1"), RunSpec("exposst", "token-wait-2")]
    rows = engine_loop.run(cli.evaluate(engine, pairs, runs, SETTINGS, out))
    return out, pairs, rows


def run_agent(engine, engine_loop, data_files, out, **options):
    """SimulEval's evaluator in this process, on the fixture engine; (log lines, agent)."""
    agent = agents.ExposstAgent.attach(
        engine, engine_loop.run, slot_len=3, max_target_tokens=CAP, **options
    )
    argv = ["--source", str(data_files[0]), "--target", str(data_files[1])]
    argv += ["--output", str(out), "--no-progress-bar"]
    agents.evaluate_agent(agent, argv)
    return logs.read_instances(out / "instances.log"), agent


@pytest.mark.engine
def test_runner_scores_are_present_and_in_range(runner_rows):
    out, pairs, rows = runner_rows
    by = {(r["mode"], r["policy"]): r for r in rows}
    for row in rows:
        for name in ("BLEU", "chrF"):
            assert 0.0 <= row[name] <= 100.0
        for name in metrics.LATENCY_METRICS:
            assert math.isfinite(row[name]), (row["mode"], row["policy"], name)
        longest = max(len(p.source.split()) for p in pairs)
        assert 0.0 < row["LAAL"] <= longest
        assert row["CA_LAAL"] >= row["LAAL"]  # elapsed time only adds delay
        log = logs.read_instances(Path(row["instances"]))
        assert [i["index"] for i in log] == [p.index for p in pairs]
    # offline: every word waits for the whole source, so LAAL is the mean source length
    mean_length = sum(len(p.source.split()) for p in pairs) / len(pairs)
    assert by[("offline", "offline")]["LAAL"] == pytest.approx(mean_length)
    assert by[("exposst", "wait-1")]["LAAL"] < by[("exposst", "wait-3")]["LAAL"]
    # cost: exposst and shift compute each token once (exposst plus the refeed rule's
    # copies, which only exposst feeds); recompute re-encodes after READs
    for mode, policy in by:
        log = logs.read_instances(out / RunSpec(mode, policy).folder / "instances.log")
        computed = [i["tokens_computed"] for i in log]
        minimum = [i["tokens_minimum"] + i["refeeds"] for i in log]
        if mode != "exposst":
            assert all(i["refeeds"] == 0 for i in log), (mode, policy)
        if mode == "recompute":
            assert all(c > m for c, m in zip(computed, minimum))
        elif policy.startswith("token-"):
            # a token-level session never feeds its last target token: nothing follows it
            assert computed == [m - 1 for m in minimum]
        else:
            assert computed == minimum, (mode, policy)


@pytest.mark.engine
@pytest.mark.parametrize("mode,policy", AGENT_RUNS)
def test_agent_gives_the_runner_words_and_delays(
    mode, policy, engine, engine_loop, data_files, runner_rows, tmp_path
):
    out, _, _ = runner_rows
    theirs, agent = run_agent(engine, engine_loop, data_files, tmp_path, mode=mode, policy=policy)
    ours = logs.read_instances(out / RunSpec(mode, policy).folder / "instances.log")
    assert len(agent.transcripts) == len(ours) == len(theirs)
    for simuleval, transcript, runner in zip(theirs, agent.transcripts, ours):
        # SimulEval recorded what the agent wrote, with the agent's delays
        assert simuleval["prediction"] == " ".join(w.text for w in transcript)
        assert simuleval["delays"] == [w.delay for w in transcript]
        # with continuations joined, that is the runner's translation and delays exactly
        merged = agents.merge_continuations(transcript)
        assert [w for w, _ in merged] == runner["prediction"].split()
        assert [d for _, d in merged] == runner["delays"]
        assert simuleval["source_length"] == runner["source_length"]


@pytest.mark.engine
def test_cli_outputs_record_table_and_plots(runner_rows, data_files, tmp_path, capsys):
    out, pairs, rows = runner_rows
    argv = ["--source", str(data_files[0]), "--target", str(data_files[1]), "--model", "tiny"]
    argv += ["--output", str(out), "--record", str(tmp_path / "record.json")]
    args = cli.parse_args(argv)
    cli.publish(args, rows, pairs)
    record = json.loads((tmp_path / "record.json").read_text())
    for key in ("command", "date", "machine", "versions", "results"):
        assert key in record
    assert len(record["results"]) == len(rows)
    for name in ("quality_latency.png", "cost.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "LAAL" in capsys.readouterr().out


@pytest.mark.engine
def test_simuleval_cli_loads_the_agent_file(tiny_path, engine, engine_loop, data_files, tmp_path):
    """``simuleval --agent eval/agent.py`` in its own process gives the in-process agent's log."""
    cmd = [sys.executable, "-m", "simuleval.cli", "--agent", str(REPO / "eval" / "agent.py")]
    cmd += ["--source", str(data_files[0]), "--target", str(data_files[1])]
    cmd += ["--output", str(tmp_path / "se"), "--model", str(tiny_path), "--policy", "wait-3"]
    cmd += ["--slot-len", "3", "--max-target-tokens", str(CAP), "--no-progress-bar"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = logs.read_instances(tmp_path / "se" / "instances.log")
    ours, _ = run_agent(engine, engine_loop, data_files, tmp_path / "in", policy="wait-3")
    assert [i["prediction"] for i in theirs] == [i["prediction"] for i in ours]
    assert [i["delays"] for i in theirs] == [i["delays"] for i in ours]
    assert "LAAL" in done.stdout


@pytest.mark.engine
def test_reduced_demo_runs(model_cache):
    env = {**os.environ, "DEMO_MODEL": "tiny-llama", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env["VLLM_EXPOSST_CACHE"] = str(model_cache)
    cmd = [sys.executable, "-m", "vllm_exposst.demo", "--rate", "20", "--stagger", "0.1"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for text in ("BLEU", "LAAL", "tokens computed", "recompute baseline", "after the speaker"):
        assert text in done.stdout
