"""Dev scores during training: simultaneous greedy decoding, scored with BLEU.

The dev loss says how well the model fits the layout; BLEU of real simultaneous
decoding (the transformers reference decoder, the oracle of the vLLM path) says
whether that turns into translations under the policy sessions will use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..policies import Policy
from ..prompts import PromptTemplate
from ..reference import ReferenceDecoder

# training layout -> the reference decoder's cache mode for dev decoding; an offline
# model under a simultaneous policy is run with recomputation (test-time wait-k)
DECODE_MODE = {"exposst": "exposst", "shift": "shift", "offline": "recompute"}


@dataclass
class DevEvaluator:
    """Translate dev sources under ``policy`` and score them against the references."""

    template: PromptTemplate
    pairs: list[tuple[str, str]]
    policy: Policy
    layout: str
    slot_len: int
    max_target_tokens: int | None = None

    @property
    def mode(self) -> str:
        return DECODE_MODE[self.layout]

    def translate(self, model: Any) -> list[str]:
        """Greedy simultaneous translations of the dev sources (model put in eval mode)."""
        was_training = model.training
        model.eval()
        decoder = ReferenceDecoder(  # feeds its tensors on the model's device
            model,
            self.template,
            mode=self.mode,
            slot_len=self.slot_len,
            max_target_tokens=self.max_target_tokens,
        )
        try:
            return [decoder.translate(source, self.policy).text for source, _ in self.pairs]
        finally:
            model.train(was_training)

    def __call__(self, model: Any) -> dict[str, float]:
        hypotheses = self.translate(model)
        return score(hypotheses, [target for _, target in self.pairs])


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults) and the share of exact matches."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    exact = sum(h.split() == r.split() for h, r in zip(hypotheses, references))
    return {"bleu": round(bleu, 2), "exact": exact / max(1, len(references))}
