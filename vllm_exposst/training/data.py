"""Training pairs from files, and the padded batches the trainer feeds (design section 4).

Every example comes from :func:`vllm_exposst.training.examples.build_example`, the one
implementation of the training layout; this module only reads pairs, samples a
policy per example, pads and groups by length.  Bad files fail here, before a model
is loaded or a step is taken.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..defaults import DEFAULT_POLICY, DEFAULT_REFEED, TRAIN_MODES
from ..layout import PositionLimitError
from ..policies import Policy, parse_policy, parse_policy_mix
from ..prompts import PromptTemplate
from .examples import IGNORE_INDEX, TrainingExample, build_example

Pair = tuple[str, str]


class TrainingInputError(ValueError):
    """An input the trainer cannot use; raised before training starts."""


# -- reading pairs -------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file split on ``\\n`` only, so line numbers match other tools."""
    if not path.is_file():
        raise TrainingInputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TrainingInputError(f"{path}: not UTF-8 text ({err})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise TrainingInputError(f"{path}: empty file")
    return lines


def _check_text(path: Path, number: int, text: object, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise TrainingInputError(f"{path} line {number}: empty {what}")
    return text.strip()


def _aligned_files(source: Path, target: Path) -> list[Pair]:
    src, tgt = _lines(source), _lines(target)
    if len(src) != len(tgt):
        raise TrainingInputError(
            f"misaligned files: {source} has {len(src)} lines, {target} has {len(tgt)}"
        )
    return [
        (_check_text(source, i, s, "source"), _check_text(target, i, t, "target"))
        for i, (s, t) in enumerate(zip(src, tgt), start=1)
    ]


def _tsv(path: Path) -> list[Pair]:
    pairs = []
    for i, line in enumerate(_lines(path), start=1):
        fields = line.split("\t")
        if i == 1 and [f.strip().lower() for f in fields] == ["source", "target"]:
            continue  # header row
        if len(fields) != 2:
            raise TrainingInputError(
                f"{path} line {i}: expected 2 tab-separated fields, found {len(fields)}"
            )
        pairs.append(
            (_check_text(path, i, fields[0], "source"), _check_text(path, i, fields[1], "target"))
        )
    return pairs


def _jsonl(path: Path) -> list[Pair]:
    pairs = []
    for i, line in enumerate(_lines(path), start=1):
        if not line.strip():
            raise TrainingInputError(f"{path} line {i}: empty line")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainingInputError(f"{path} line {i}: not JSON ({err})") from None
        if not isinstance(record, dict) or "source" not in record or "target" not in record:
            raise TrainingInputError(f'{path} line {i}: expected {{"source": ..., "target": ...}}')
        pairs.append(
            (
                _check_text(path, i, record["source"], "source"),
                _check_text(path, i, record["target"], "target"),
            )
        )
    return pairs


def read_pairs(files: Sequence[str | Path]) -> list[Pair]:
    """Pairs from two line-aligned text files, or one ``.tsv`` / ``.jsonl`` file."""
    paths = [Path(f).expanduser() for f in files]
    if len(paths) == 2:
        return _aligned_files(*paths)
    if len(paths) != 1:
        raise TrainingInputError(f"give a source and a target file, or one pairs file: {files}")
    suffix = paths[0].suffix.lower()
    if suffix in (".tsv", ".tab"):
        return _tsv(paths[0])
    if suffix in (".jsonl", ".json"):
        return _jsonl(paths[0])
    raise TrainingInputError(
        f"{paths[0]}: a pairs file must be .tsv (source<TAB>target) or .jsonl "
        '({"source": ..., "target": ...}); for plain text give source and target files'
    )


# -- policies --------------------------------------------------------------------
def training_policies(spec: str) -> list[Policy]:
    """The policies a spec or mix names (``wait-k:1-4,read-2/write-1``), each with a layout."""
    parts = [part.strip() for part in spec.split(",")]
    try:
        if not all(parts):
            raise ValueError("empty entry in the comma list")
        mix = [policy for part in parts for policy in parse_policy_mix(part)]
    except ValueError as err:
        raise TrainingInputError(f"policy {spec!r}: {err}") from None
    for policy in mix:
        if policy.needs_confidence:
            raise TrainingInputError(
                f"policy {policy.spec!r} needs the model's confidence: it has no training layout"
            )
    return mix


def inference_policy(spec: str | None, mix: list[Policy]) -> Policy:
    """The policy sessions (and dev decoding) use: given, the single training one, or wait-3."""
    if spec is None:
        return mix[0] if len(mix) == 1 else parse_policy(DEFAULT_POLICY)
    try:
        return parse_policy(spec)
    except ValueError as err:
        raise TrainingInputError(f"inference policy {spec!r}: {err}") from None


def sample_policies(mix: list[Policy], count: int, seed: int) -> list[Policy]:
    """One policy per example, drawn once with ``seed`` (the same run gives the same draw)."""
    if len(mix) == 1:
        return mix * count
    rng = random.Random(seed)
    return [rng.choice(mix) for _ in range(count)]


# -- dataset -----------------------------------------------------------------------
@dataclass
class LayoutDataset(torch.utils.data.Dataset):
    """Examples in the training layout, with the pair and policy each came from."""

    examples: list[TrainingExample]
    pair_index: list[int]
    policies: list[str]
    skipped: int = 0  # pairs longer than ``max_length`` or past the model's last position
    mode: str = "exposst"
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = [len(e) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        e = self.examples[index]
        return {"input_ids": e.input_ids, "position_ids": e.position_ids, "labels": e.labels}

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def positions(self) -> int:
        """Position ids spanned (last position + 1, summed): reserved slots count here."""
        return sum(max(e.position_ids) + 1 for e in self.examples)


def build_dataset(
    template: PromptTemplate,
    pairs: list[Pair],
    policies: list[Policy],
    *,
    mode: str,
    slot_len: int,
    max_length: int,
    max_position: int | None = None,
    progress: bool = False,
    lookahead_labels: bool = False,
    refeed: bool = DEFAULT_REFEED,
) -> LayoutDataset:
    """One :func:`build_example` per pair; too long pairs are counted and left out."""
    if mode not in TRAIN_MODES:
        raise TrainingInputError(f"unknown layout {mode!r}; expected one of {TRAIN_MODES}")
    examples, index, used = [], [], []
    skipped = 0
    items: Any = zip(pairs, policies)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(pairs), desc=f"building {mode} examples", leave=False)
    for i, ((source, target), policy) in enumerate(items):
        try:
            example = build_example(
                template,
                source,
                target,
                policy,
                mode=mode,
                slot_len=slot_len,
                max_position=max_position,
                lookahead_labels=lookahead_labels,
                refeed=refeed,
            )
        except PositionLimitError:
            skipped += 1
            continue
        if len(example) > max_length:
            skipped += 1
            continue
        examples.append(example)
        index.append(i)
        used.append(policy.spec)
    if not examples:
        raise TrainingInputError(
            f"every one of the {len(pairs)} pairs is longer than max_length={max_length} tokens "
            "(or passes the model's last position)"
        )
    return LayoutDataset(examples, index, used, skipped, mode)


# -- batching ------------------------------------------------------------------------
@dataclass(frozen=True)
class PadCollator:
    """Right-pads ``input_ids`` / ``labels`` / ``position_ids`` and adds an attention mask.

    The 2-D mask is always given: without it transformers reads non-contiguous
    position ids as packed sequences and would cut attention at every jump.
    """

    pad_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_id, dtype=torch.long),
            "position_ids": torch.zeros((len(features), width), dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        }
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
            batch["position_ids"][row, :n] = torch.tensor(f["position_ids"])
            batch["labels"][row, :n] = torch.tensor(f["labels"])
            batch["attention_mask"][row, :n] = 1
        return batch


class TokenBudgetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length whose padded size stays within ``max_tokens``.

    Batches are cut once (indices shuffled with ``seed``, then stably sorted by
    length), so their number is fixed; each epoch visits them in an order drawn
    from ``seed`` and the epoch, which makes a resumed run see the same batches.
    """

    def __init__(
        self,
        lengths: list[int],
        max_tokens: int,
        *,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        order = list(range(len(lengths)))
        if shuffle:
            random.Random(seed).shuffle(order)
        order.sort(key=lambda i: lengths[i])
        self.batches: list[list[int]] = []
        current: list[int] = []
        for i in order:  # ascending length: the newest index is the longest
            fits = (len(current) + 1) * lengths[i] <= max_tokens
            if current and (not fits or len(current) == (max_batch_size or len(lengths))):
                self.batches.append(current)
                current = []
            current.append(i)
        if current:
            self.batches.append(current)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        for b in order:
            yield list(self.batches[b])
