"""Talk-level evaluation (``exposst-eval --talks``) against the field's scorers.

The tiny random Llama translates noise, so the checks are about the stream: with one
sentence per line, the segmenter must cut the talk at the lines, the talk's sentences
must be the sentence-level run's translations, and after OmniSTEval's and
simulstream's own realignment the scores must be the sentence-level ones (BLEU by
sacrebleu, LAAL by SimulEval) of the same sentences, in talk time.
"""

from __future__ import annotations

import json
import math

import pytest
from sacrebleu.metrics import BLEU

from vllm_exposst import models
from vllm_exposst.evaluation import cli, logs
from vllm_exposst.evaluation.data import Pair, load_pairs
from vllm_exposst.evaluation.runner import RunSettings, RunSpec
from vllm_exposst.evaluation.talks import load_talks

from ..conftest import engine_for_module, write_test_set

LINES = [  # two talks of three sentences, one per line
    ("A man walks in the park.", "Ein Mann geht im Park."),
    ("Two dogs play with a red ball near the tree.", "Zwei Hunde spielen mit einem Ball."),
    ("The old woman sits at a small table.", "Die alte Frau sitzt an einem Tisch."),
    ("Three children are eating bread.", "Drei Kinder essen Brot."),
    ("A black cat looks at the water.", "Eine schwarze Katze schaut auf das Wasser."),
    ("The boy runs home.", "Der Junge rennt nach Hause."),
]
TALK_IDS = ["11", "11", "11", "7", "7", "7"]
SETTINGS = RunSettings(slot_len=3, max_target_tokens=20, concurrency=4)
RATE = 2.5


def test_talks_group_consecutive_lines_and_refuse_a_split_talk(tmp_path):
    pairs = [Pair(i, s, r) for i, (s, r) in enumerate(LINES)]
    ids = tmp_path / "ok.talks"
    ids.write_text("\n".join(TALK_IDS) + "\n")
    talks = load_talks(ids, pairs)
    assert [(t.id, [p.index for p in t.pairs]) for t in talks] == [
        ("11", [0, 1, 2]),
        ("7", [3, 4, 5]),
    ]
    split = tmp_path / "split.talks"
    split.write_text("1\n2\n1\n2\n2\n2\n")
    with pytest.raises(ValueError, match="not consecutive"):
        load_talks(split, pairs)
    short = tmp_path / "short.talks"
    short.write_text("1\n1\n")
    with pytest.raises(ValueError, match="fewer"):
        load_talks(short, pairs)


def test_cli_refuses_a_talks_file_that_does_not_fit(tmp_path, capsys):
    source, target = write_test_set(tmp_path, LINES)
    talks = tmp_path / "bad.talks"
    talks.write_text("1\n2\n1\n")
    argv = ["--source", str(source), "--target", str(target), "--talks", str(talks)]
    assert cli.main(argv + ["--model", "tiny-llama"]) == 2
    assert "talks" in capsys.readouterr().err


@pytest.fixture(scope="module")
def engine(engine_loop, model_cache):
    path = models.tiny_model("llama", model_cache)
    yield from engine_for_module(engine_loop, path, max_num_seqs=8, enable_prefix_caching=False)


@pytest.mark.engine
def test_talks_are_cut_at_their_sentences_and_scored_as_the_sentences(
    engine, engine_loop, tmp_path
):
    spec = RunSpec("exposst", "wait-2")
    first = write_test_set(tmp_path, LINES)
    engine_loop.run(
        cli.evaluate(engine, load_pairs(*first), [spec], SETTINGS, tmp_path / "plain", RATE)
    )
    predictions = [
        line["prediction"]
        for line in logs.read_instances(tmp_path / "plain" / spec.folder / "instances.log")
    ]
    assert all(predictions), "the random model writes something for each sentence"
    # references the realignment can follow: the translations, a middle word changed
    references = []
    for text in predictions:
        words = text.split()
        if len(words) >= 3:
            words[len(words) // 2] = "Xylophon"
        references.append(" ".join(words))
    data = tmp_path / "data"
    data.mkdir()
    source, target = write_test_set(data, [(s, r) for (s, _), r in zip(LINES, references)])
    (data / "test.talks").write_text("\n".join(TALK_IDS) + "\n")
    pairs = load_pairs(source, target)
    talks = load_talks(data / "test.talks", pairs)
    out = tmp_path / "talks"
    (row,) = engine_loop.run(
        cli.evaluate(engine, pairs, [spec], SETTINGS, out, RATE, talks=talks, max_words=60)
    )
    folder = out / spec.folder / "talks"
    cut = [json.loads(line) for line in (folder / "talks.sentences.jsonl").open()]
    assert [c["source"] for c in cut] == [s for s, _ in LINES]  # cut at each line's stop
    assert [c["prediction"] for c in cut] == predictions  # fresh state per sentence
    assert [c["offset"] for c in cut] == [0, 6, 16, 0, 5, 12]
    assert row["segmented_sentences"] == row["reference_sentences"] == len(LINES)
    # OmniSTEval's long-form BLEU after its resegmentation: sacrebleu on the sentences
    expected = BLEU().corpus_score(predictions, [references]).score
    assert row["BLEU"] == pytest.approx(expected, abs=1e-6)
    assert row["talk_BLEU"] == pytest.approx(expected, abs=1e-3)  # it prints 4 decimals
    # StreamLAAL (mweralign realignment, seconds): SimulEval's LAAL on the same
    # sentences (source words, reference length), in seconds at the speaking rate
    assert row["StreamLAAL"] * RATE == pytest.approx(row["LAAL"], rel=1e-6)
    assert row["CA_StreamLAAL"] >= row["StreamLAAL"]
    for name in ("LongYAAL", "CA_LongYAAL", "LongLAAL", "talk_chrF"):
        assert math.isfinite(row[name]), name
    assert [(t["talk"], t["sentences"]) for t in row["per_talk"]] == [("11", 3), ("7", 3)]
    each = [
        BLEU().corpus_score(predictions[a:b], [references[a:b]]).score for a, b in [(0, 3), (3, 6)]
    ]
    assert [t["BLEU"] for t in row["per_talk"]] == pytest.approx(each, abs=1e-6)
