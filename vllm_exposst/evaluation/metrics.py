"""Scores of one run: sacrebleu quality, SimulEval latency, computation-aware LAAL, cost.

Latency uses SimulEval's own scorer classes on ``TextToTextInstance`` objects built
from our hypotheses, so the numbers are SimulEval's by construction.  Computation-
aware LAAL is our definition (SimulEval 1.1.4 refuses it for text input): the delay of
target word i becomes ``d_i + rate * t_i``, where ``t_i`` is the wall-clock seconds
from opening the session to writing the word and ``rate`` the speaking rate in source
words per second; then SimulEval's LAAL formula is applied to these delays.
"""

from __future__ import annotations

import math
import statistics
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any

LATENCY_METRICS = ("LAAL", "AL", "AP", "DAL", "ATD")
DEFAULT_SPEAKING_RATE = 2.5  # source words per second, about 150 words a minute


@dataclass
class Hypothesis:
    """One translated sentence with everything the scores need."""

    index: int
    source: str
    reference: str
    prediction: str
    delays: list[int]  # source words read when each target word was written
    elapsed: list[float]  # seconds from opening the session to each target word
    tokens_computed: int = 0
    tokens_minimum: int = 0  # prefix + header + source + target tokens, each once
    refeeds: int = 0  # copies fed by the refeed rule (in tokens_computed, not the minimum)
    seconds: float = 0.0  # wall-clock from opening the session to its result
    request_ids: list[str] = field(default_factory=list)  # engine requests, for the counts

    def __post_init__(self) -> None:
        self.prediction = " ".join(self.prediction.split())  # as SimulEval joins words
        words = len(self.prediction.split())
        if len(self.delays) != words or len(self.elapsed) != words:
            raise ValueError(
                f"instance {self.index}: {words} target words but {len(self.delays)} delays "
                f"and {len(self.elapsed)} elapsed times"
            )


def ca_delays(delays: list[int], elapsed: list[float], rate: float) -> list[float]:
    """Computation-aware delays in source words: ``d_i + rate * t_i``."""
    return [d + rate * t for d, t in zip(delays, elapsed, strict=True)]


def instance_record(hyp: Hypothesis, rate: float = DEFAULT_SPEAKING_RATE) -> dict[str, Any]:
    """One line of a SimulEval ``instances.log`` (plus our cost fields).

    ``elapsed`` holds the computation-aware delays, so ``simuleval --score-only
    --computation-aware`` on this log gives our computation-aware LAAL.
    """
    return {
        "index": hyp.index,
        "prediction": hyp.prediction,
        "delays": list(hyp.delays),
        "elapsed": ca_delays(hyp.delays, hyp.elapsed, rate),
        "prediction_length": len(hyp.delays),
        "reference": hyp.reference,
        "source": hyp.source,
        "source_length": len(hyp.source.split()),
        "elapsed_seconds": list(hyp.elapsed),
        "tokens_computed": hyp.tokens_computed,
        "tokens_minimum": hyp.tokens_minimum,
        "refeeds": hyp.refeeds,
        "seconds": hyp.seconds,
    }


def simuleval_instances(
    hyps: list[Hypothesis], delays: list[list[float]] | None = None
) -> dict[int, Any]:
    """SimulEval ``TextToTextInstance`` objects keyed 0..n-1, as its evaluator keys them."""
    from simuleval.evaluator.instance import TextToTextInstance

    args = Namespace(eval_latency_unit="word")
    out = {}
    for i, hyp in enumerate(hyps):
        ins = TextToTextInstance(hyp.index, None, args)
        ins.source = hyp.source.split()
        ins.reference = hyp.reference
        ins.prediction_list = hyp.prediction.split()
        ins.delays = list(delays[i] if delays is not None else hyp.delays)
        ins.elapsed = [0] * len(ins.delays)  # what SimulEval records for text input
        ins.finish_prediction = True
        out[i] = ins
    return out


def _scorer_class(name: str) -> type:
    from simuleval.evaluator.scorers.latency_scorer import (
        ALScorer,
        APScorer,
        ATDScorer,
        DALScorer,
        LAALScorer,
    )

    classes = {"LAAL": LAALScorer, "AL": ALScorer, "AP": APScorer, "DAL": DALScorer}
    return {**classes, "ATD": ATDScorer}[name]


def latency_score(name: str, instances: dict[int, Any]) -> float:
    """One SimulEval latency metric with its CLI defaults (reference length, not CA).

    NaN when no instance has a target word (SimulEval would fail on an empty mean).
    """
    scorer = _scorer_class(name)(computation_aware=False, use_ref_len=True)
    try:
        return float(scorer(instances))
    except statistics.StatisticsError:
        return math.nan


def latency_scores(instances: dict[int, Any]) -> dict[str, float]:
    """LAAL, AL, AP, DAL and ATD by SimulEval's scorer classes."""
    return {name: latency_score(name, instances) for name in LATENCY_METRICS}


def quality_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU (13a, as SimulEval) and chrF, with their sacrebleu signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {
        "BLEU": bleu.corpus_score(predictions, [references]).score,
        "chrF": chrf.corpus_score(predictions, [references]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def cost_scores(hyps: list[Hypothesis]) -> dict[str, float]:
    computed = [h.tokens_computed for h in hyps]
    minimum = [h.tokens_minimum for h in hyps]
    return {
        "tokens_computed": statistics.mean(computed),
        "tokens_minimum": statistics.mean(minimum),
        "computed_over_minimum": sum(computed) / max(1, sum(minimum)),
        "seconds_per_sentence": statistics.mean(h.seconds for h in hyps),
    }


def score_run(hyps: list[Hypothesis], rate: float = DEFAULT_SPEAKING_RATE) -> dict[str, Any]:
    """Every score of one mode and policy over its sentences."""
    if not hyps:
        raise ValueError("no sentences to score")
    scores: dict[str, Any] = quality_scores(
        [h.prediction for h in hyps], [h.reference for h in hyps]
    )
    scores.update(latency_scores(simuleval_instances(hyps)))
    ca = [ca_delays(h.delays, h.elapsed, rate) for h in hyps]
    scores["CA_LAAL"] = latency_score("LAAL", simuleval_instances(hyps, ca))
    scores.update(cost_scores(hyps))
    scores["speaking_rate"] = rate
    scores["sentences"] = len(hyps)
    return scores
