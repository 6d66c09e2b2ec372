"""The output files of one run, in the formats the field's scorers read: SimulEval's
``instances.log`` (OmniSTEval reads it too, with ``references.txt``) and simulstream's
metrics log."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .metrics import LATENCY_METRICS, Hypothesis, instance_record


def write_instances(path: Path, hyps: list[Hypothesis], rate: float) -> Path:
    """``instances.log``: one JSON line per sentence, the fields SimulEval writes and reads.

    ``simuleval --score-only --output <folder>`` scores it (see docs/evaluation.md).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for hyp in hyps:
            f.write(json.dumps(instance_record(hyp, rate), ensure_ascii=False) + "\n")
    return path


def write_references(path: Path, hyps: list[Hypothesis]) -> Path:
    """``references.txt``: one reference per line, the file OmniSTEval takes beside the log:
    ``omnisteval shortform --hypothesis_file instances.log --ref_sentences_file
    references.txt --word_level``."""
    path.write_text("".join(" ".join(h.reference.split()) + "\n" for h in hyps), encoding="utf-8")
    return path


# simulstream's eval config for a text log: words joined by spaces, latency in words
SIMULSTREAM_CONFIG = "detokenizer_type: simuleval\nlatency_unit: word\n"


def write_simulstream(path: Path, hyps: list[Hypothesis], rate: float) -> Path:
    """``simulstream.jsonl``, the metrics log simulstream's scorers read (its
    ``LogReader``), and ``simulstream.yaml``, its eval config.

    Each sentence is an "audio" of its own (``metadata.wav_name`` is its index); each
    target word is one output line: ``total_audio_processed`` is the source read when it
    was written, in seconds at ``rate`` words per second, and ``computation_time`` the
    seconds since the sentence opened, so simulstream's computation-aware delay is our
    ``elapsed`` divided by the rate.
    """
    recordings = [
        (h.index, f"{h.index}.wav", h.prediction.split(), h.delays, h.elapsed) for h in hyps
    ]
    return write_simulstream_log(path, recordings, rate)


def write_simulstream_log(
    path: Path, recordings: list[tuple[int, str, list[str], list[int], list[float]]], rate: float
) -> Path:
    """simulstream's metrics log and eval config for ``recordings``: per recording its
    id and name, target words, source words read when each was written and seconds of
    computation behind each (one output line per word, delays in seconds at ``rate``)."""
    lines: list[dict[str, Any]] = []
    for number, name, words, delays, seconds in recordings:
        lines.append({"id": number, "metadata": {"wav_name": name}})
        for word, delay, spent in zip(words, delays, seconds, strict=True):
            lines.append(
                {
                    "id": number,
                    "total_audio_processed": delay / rate,
                    "computation_time": spent,
                    "generated_tokens": [word],
                    "deleted_tokens": [],
                }
            )
    path.write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    path.with_suffix(".yaml").write_text(SIMULSTREAM_CONFIG)
    return path


def write_config(folder: Path) -> None:
    """The ``config.yaml`` SimulEval's ``--score-only`` looks for next to the log."""
    (folder / "config.yaml").write_text("source_type: text\ntarget_type: text\n")


def write_scores(path: Path, scores: dict[str, Any]) -> Path:
    """``scores.tsv`` in SimulEval's layout (a header row, a value row)."""
    names = ["BLEU", "chrF", *LATENCY_METRICS, "CA_LAAL"]
    values = [scores[n] for n in names]
    row = ["nan" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" for v in values]
    path.write_text("\t".join(names) + "\n" + "\t".join(row) + "\n")
    return path


def read_instances(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
