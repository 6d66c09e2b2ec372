"""Talk-level evaluation: a whole talk as one stream of words, scored as a listener reads it.

A talk's source lines are joined into one word stream and cut into sentences by the
server's own segmenter (:func:`vllm_exposst.segmentation.segment`, the rules of
``"segmentation": "auto"``); each sentence is translated with fresh translation state,
as a live session translates it.  The sentences' translations are joined into one
stream per talk, with each target word's delay in talk time (source words at the
speaking rate), and the field's scorers realign that stream to the reference
sentences and score it:

* OmniSTEval (``omnisteval longform``, the IWSLT 2026 scorer): BLEU, chrF and LongYAAL
  (computation-unaware and -aware), after its own resegmentation;
* simulstream's StreamLAAL (its ``stream_laal`` scorer), which realigns with
  ``mweralign``.

Both read the same "audio definition" of the reference sentences: the talk as a
recording, each reference sentence at the time its source line is spoken.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..segmentation import segment
from .data import Pair, read_lines
from .logs import write_simulstream_log
from .metrics import Hypothesis, quality_scores
from .runner import RunSettings, RunSpec, run_spec

TALK_FILES = {
    "instances": "talks.instances.jsonl",  # one SimulEval-style line per talk (ms)
    "segments": "talks.segments.yaml",  # the reference sentences in talk time
    "references": "talks.references.txt",  # the reference sentences, in that order
    "simulstream": "talks.simulstream.jsonl",  # simulstream's metrics log, one talk each
    "sentences": "talks.sentences.jsonl",  # the segmenter's sentences and translations
}


@dataclass(frozen=True)
class Talk:
    """A talk's lines in order (source and reference sentences)."""

    id: str
    pairs: list[Pair]

    @property
    def name(self) -> str:
        """The talk as a "recording" for the scorers (they strip the extension)."""
        return f"talk_{self.id}.wav"


def load_talks(path: str | Path, pairs: list[Pair]) -> list[Talk]:
    """Group ``pairs`` by the talk id of their line (``path``: one id per line of the
    test set, a talk's lines consecutive, as ``iwslt2017-ende/tst2016.talks``)."""
    ids = [line.strip() for line in read_lines(path)]
    if pairs and pairs[-1].index >= len(ids):
        raise ValueError(f"{path} has {len(ids)} lines, fewer than the test set's")
    talks: list[Talk] = []
    for pair in pairs:
        talk_id = ids[pair.index]
        if not talk_id:
            raise ValueError(f"{path}: line {pair.index + 1} has no talk id")
        if talks and talks[-1].id == talk_id:
            talks[-1].pairs.append(pair)
        elif any(t.id == talk_id for t in talks):
            raise ValueError(f"{path}: the lines of talk {talk_id} are not consecutive")
        else:
            talks.append(Talk(talk_id, [pair]))
    return talks


@dataclass
class TalkHypothesis:
    """A talk's translation: its sentences (as the segmenter cut them) in order, and
    the source words before each one."""

    talk: Talk
    sentences: list[Hypothesis] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)  # why each sentence ended

    @property
    def source_words(self) -> int:
        return sum(len(p.source.split()) for p in self.talk.pairs)

    @property
    def prediction(self) -> str:
        return " ".join(h.prediction for h in self.sentences if h.prediction)

    def delays(self) -> list[int]:
        """Per target word: source words of the talk read when it was written."""
        return [o + d for h, o in zip(self.sentences, self.offsets) for d in h.delays]

    def elapsed(self) -> list[float]:
        """Per target word: seconds since its sentence opened (its computation)."""
        return [t for h in self.sentences for t in h.elapsed]


def talk_sentences(talk: Talk, language: str, max_words: int | None) -> list[tuple[str, str, int]]:
    """The talk's words cut as the server cuts them: ``(text, end, words before)``."""
    words = [w for p in talk.pairs for w in p.source.split()]
    out, before = [], 0
    for piece in segment(words, language, max_words):
        out.append((piece.text, piece.end, before))
        before += len(piece.words)
    return out


def instance_line(hyp: TalkHypothesis, rate: float) -> dict[str, Any]:
    """The talk as one SimulEval-style line in talk time (milliseconds), as OmniSTEval's
    long-form mode reads it: a target word written after ``d`` source words is emitted
    when the ``d``-th word has been spoken, ``d / rate`` seconds into the talk, and, with
    its computation, ``t`` seconds later."""
    delays = [1000 * d / rate for d in hyp.delays()]
    elapsed = [c + 1000 * t for c, t in zip(delays, hyp.elapsed(), strict=True)]
    return {
        "index": hyp.talk.id,
        "source": hyp.talk.name,
        "source_length": 1000 * hyp.source_words / rate,
        "prediction": hyp.prediction,
        "delays": delays,
        "elapsed": elapsed,
        "reference": " ".join(p.reference for p in hyp.talk.pairs),
        "sentences": len(hyp.sentences),
        "reference_sentences": len(hyp.talk.pairs),
    }


def write_talk_files(folder: Path, hyps: list[TalkHypothesis], rate: float) -> dict[str, Path]:
    """The scorers' inputs for ``hyps`` under ``folder`` (names in ``TALK_FILES``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in TALK_FILES.items()}
    with paths["instances"].open("w", encoding="utf-8") as f:
        for hyp in hyps:
            f.write(json.dumps(instance_line(hyp, rate), ensure_ascii=False) + "\n")
    segments, references = [], []
    for hyp in hyps:
        spoken = 0
        for pair in hyp.talk.pairs:
            words = len(pair.source.split())
            segments.append(
                {"wav": hyp.talk.name, "offset": spoken / rate, "duration": words / rate}
            )
            references.append(" ".join(pair.reference.split()))
            spoken += words
    paths["segments"].write_text(
        "".join(f"- {json.dumps(s)}\n" for s in segments), encoding="utf-8"
    )  # JSON objects are YAML flow mappings
    paths["references"].write_text("".join(r + "\n" for r in references), encoding="utf-8")
    recordings = [
        (number, h.talk.name, h.prediction.split(), h.delays(), h.elapsed())
        for number, h in enumerate(hyps)
    ]
    write_simulstream_log(paths["simulstream"], recordings, rate)
    with paths["sentences"].open("w", encoding="utf-8") as f:
        for hyp in hyps:
            for h, offset, end in zip(hyp.sentences, hyp.offsets, hyp.ends, strict=True):
                row = {"talk": hyp.talk.id, "offset": offset, "end": end}
                row.update(source=h.source, prediction=h.prediction, delays=h.delays)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths


OMNISTEVAL_NAMES = {
    "BLEU": "BLEU",
    "chrF": "chrF",
    "LongYAAL (CU)": "LongYAAL",
    "LongYAAL (CA)": "CA_LongYAAL",
    "LongLAAL (CU)": "LongLAAL",
    "LongLAAL (CA)": "CA_LongLAAL",
}


def omnisteval_scores(paths: dict[str, Path], output: Path) -> dict[str, float]:
    """``omnisteval longform`` on the talks (its own resegmentation), run as its CLI;
    BLEU, chrF and LongYAAL (in ms of talk time) from the ``scores.tsv`` it writes."""
    command = [
        sys.executable,
        "-c",
        "import sys; from omnisteval.cli import main; sys.exit(main())",
        "longform",
        "--speech_segmentation",
        str(paths["segments"]),
        "--ref_sentences_file",
        str(paths["references"]),
        "--hypothesis_file",
        str(paths["instances"]),
        "--hypothesis_format",
        "jsonl",
        "--word_level",
        "--output_folder",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"omnisteval longform failed:\n{done.stderr[-2000:]}")
    scores = {}
    for line in (output / "scores.tsv").read_text().splitlines()[1:]:
        name, value = line.split("\t")
        if name in OMNISTEVAL_NAMES:
            scores[OMNISTEVAL_NAMES[name]] = float(value)
    return scores


def stream_laal(paths: dict[str, Path]) -> dict[str, float]:
    """simulstream's StreamLAAL (mweralign realignment), in seconds of talk time:
    ``StreamLAAL`` and its computation-aware ``CA_StreamLAAL``."""
    from argparse import Namespace

    with warnings.catch_warnings():  # pydub, imported for audio we do not have
        warnings.filterwarnings("ignore", "Couldn't find ffmpeg", RuntimeWarning)
        from simulstream.config import yaml_config
        from simulstream.metrics.readers import LogReader, YamlReferenceReader
        from simulstream.metrics.scorers.latency import (
            LATENCY_SCORER_REGISTRY,
            LatencyScoringSample,
        )

    config = yaml_config(str(paths["simulstream"].with_suffix(".yaml")))
    log = LogReader(config, str(paths["simulstream"]), latency_unit="word")
    references = YamlReferenceReader(str(paths["segments"]), str(paths["references"])).references
    outputs = log.final_outputs_and_latencies()
    scorer = LATENCY_SCORER_REGISTRY["stream_laal"](Namespace(latency_unit="word"))
    samples = [LatencyScoringSample(name, outputs[name], references[name]) for name in references]
    score = scorer.score(samples)
    return {
        "StreamLAAL": float(score.ideal_latency),
        "CA_StreamLAAL": float(score.computational_aware_latency),
    }


def per_talk_quality(output: Path, talks: list[Talk]) -> list[dict[str, Any]]:
    """BLEU and chrF of each talk (sacrebleu) on OmniSTEval's resegmentation of it
    (``instances.resegmented.jsonl``: the stream cut at the reference sentences)."""
    rows = [json.loads(line) for line in (output / "instances.resegmented.jsonl").open()]
    out = []
    for number, talk in enumerate(talks):
        mine = [r for r in rows if r["docid"] == number]
        scores = quality_scores([r["prediction"] for r in mine], [r["reference"] for r in mine])
        out.append({"talk": talk.id, "BLEU": scores["BLEU"], "chrF": scores["chrF"]})
    return out


async def run_talks(
    engine: Any,
    talks: list[Talk],
    spec: RunSpec,
    settings: RunSettings,
    max_words: int | None,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[TalkHypothesis], float]:
    """Every talk under one mode and policy: its sentences as the server cuts them, each
    translated with fresh state (at most ``settings.concurrency`` at once, across
    talks: a sentence's translation depends on its words alone); returns the talks in
    order and the wall seconds."""
    language = settings.session(engine, spec).source_lang
    hyps, pieces = [], []
    for talk in talks:
        hyp = TalkHypothesis(talk)
        for text, end, before in talk_sentences(talk, language, max_words):
            pieces.append(Pair(len(pieces), text, ""))
            hyp.offsets.append(before)
            hyp.ends.append(end)
        hyps.append(hyp)
    translated, wall = await run_spec(engine, pieces, spec, settings, on_done=on_done)
    at = 0
    for hyp in hyps:
        hyp.sentences = translated[at : at + len(hyp.offsets)]
        at += len(hyp.offsets)
    return hyps, wall


def score_talks(
    hyps: list[TalkHypothesis], folder: Path, rate: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write the talks' files under ``folder`` and score them: overall scores (OmniSTEval,
    StreamLAAL, the segmenter's sentence count) and one row per talk."""
    paths = write_talk_files(folder, hyps, rate)
    omni = folder / "omnisteval"
    scores: dict[str, Any] = omnisteval_scores(paths, omni)
    scores.update(stream_laal(paths))
    scores["talks"] = len(hyps)
    scores["segmented_sentences"] = sum(len(h.sentences) for h in hyps)
    scores["reference_sentences"] = sum(len(h.talk.pairs) for h in hyps)
    rows = per_talk_quality(omni, [h.talk for h in hyps])
    for row, hyp in zip(rows, hyps, strict=True):
        row.update(sentences=len(hyp.sentences), reference_sentences=len(hyp.talk.pairs))
    return scores, rows
