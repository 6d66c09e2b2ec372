"""SimulEval-compatible output files of one run."""

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
