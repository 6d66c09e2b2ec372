"""Training examples in the exact layout a session sees at inference (design section 4).

The policy is run with the reference target as if it were the model's output; the
resulting events fix the token order (physical order) and, through
:mod:`vllm_exposst.layout`, the position ids.  Labels cover target tokens and the
stop token; HF-style, ``labels[i]`` is predicted from token ``i - 1`` in event order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..defaults import DEFAULT_MODE, DEFAULT_REFEED, DEFAULT_SLOT_LEN, OFFLINE
from ..layout import READ, REFEED, WRITE, Event, make_allocator
from ..policies import Policy, PolicyState, parse_policy
from ..prompts import PromptTemplate, units

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainingExample:
    """One sequence in physical order, with what each token is."""

    input_ids: list[int]
    position_ids: list[int]
    labels: list[int]
    kinds: list[str]  # "prefix", "source", "header", "target", "refeed" or "stop", per token
    events: list[Event]  # token-level events after the prefix, header not counted

    def __len__(self) -> int:
        return len(self.input_ids)


STOP_QUERY = "Q"  # the model was asked and answered stop: the WRITE becomes a READ


def policy_events(
    policy: Policy,
    source_units: list[list[int]],
    target_units: list[list[int]],
    *,
    stop_queries: bool = False,
) -> Iterator[tuple[str, list[int]]]:
    """Run ``policy`` with a known target: yields ``(kind, unit tokens)`` in event order.

    A WRITE when the target is complete but the source is not becomes a READ: at
    inference the model's stop token before the end of the source means READ.  With
    ``stop_queries`` each such point is also yielded, as ``(STOP_QUERY, [])`` before the
    READ: the model was asked there (which matters to the refeed rule).
    """
    if policy.needs_confidence:
        raise ValueError(f"policy {policy.spec} needs model confidence; it has no training layout")
    read = written = 0
    while read < len(source_units) or written < len(target_units):
        state = PolicyState(read, written, source_done=read == len(source_units))
        action = policy.decide(state)
        if action == WRITE and written == len(target_units):
            if stop_queries:
                yield STOP_QUERY, []
            action = READ
        if action == READ:
            yield READ, source_units[read]
            read += 1
        else:
            yield WRITE, target_units[written]
            written += 1


def build_example(
    template: PromptTemplate,
    source: str | list[str],
    target: str | list[str],
    policy: Policy | str,
    *,
    mode: str = DEFAULT_MODE,
    slot_len: int = DEFAULT_SLOT_LEN,
    max_position: int | None = None,
    lookahead_labels: bool = False,
    refeed: bool = DEFAULT_REFEED,
) -> TrainingExample:
    """Input ids, position ids and labels of one pair under a policy and layout mode.

    ``exposst`` and ``shift`` keep the policy's event order (they differ in positions
    only); ``offline`` is the ordinary prompt (all source, then the target).

    With ``refeed`` (``exposst`` only) the layout follows the refeed rule of
    :class:`~vllm_exposst.layout.ExposstAllocator`: a copy of the last target token,
    at its own position, stands before the first target token after a READ; the copy
    has no label of its own, and the next target token is predicted from it.

    With ``lookahead_labels`` (word-level policies; off by default, as in the
    contract), the last target token before a READ is also trained to predict the
    next target word's first token (or the stop token): that prediction is the
    lookahead that ends the word at inference.
    """
    policy = parse_policy(policy)
    source_words, target_words = template.words_ids(source), template.words_ids(target)
    if not source_words or not target_words:
        raise ValueError("a training pair needs a non-empty source and target")
    if mode == OFFLINE:
        flat_source = [t for word in source_words for t in word]
        flat_target = [t for word in target_words for t in word]
        steps = [(READ, flat_source), (WRITE, flat_target)]
    else:
        source_units = units(source_words, policy.unit)
        target_units = units(target_words, policy.unit)
        steps = list(policy_events(policy, source_units, target_units, stop_queries=True))
    steps.append((WRITE, [template.stop_id]))

    allocator = make_allocator(
        "exposst" if mode == "exposst" else "shift",
        prefix_len=template.prefix_len,
        header_len=template.header_len,
        slot_len=slot_len,
        max_position=max_position,
        refeed=refeed,
    )
    ids, kinds = list(template.prefix_ids), ["prefix"] * template.prefix_len
    positions = allocator.prefix()
    events: list[Event] = []
    last_target = None  # the token a refeed copies
    for kind, tokens in steps:
        if kind in (WRITE, STOP_QUERY) and allocator.refeed_due:
            ids.append(last_target)
            kinds.append("refeed")
            positions += allocator.refeed()
            events.append((REFEED, 1))
        if kind == STOP_QUERY:
            continue
        if kind == WRITE and not allocator.header_written:
            ids += template.header_ids
            kinds += ["header"] * template.header_len
        ids += tokens
        kinds += ["source" if kind == READ else "target"] * len(tokens)
        if kind == WRITE:
            last_target = tokens[-1]
        positions += allocator.read(len(tokens)) if kind == READ else allocator.write(len(tokens))
        events.append((kind, len(tokens)))
    kinds[-1] = "stop"
    labels = [t if k in ("target", "stop") else IGNORE_INDEX for t, k in zip(ids, kinds)]
    if lookahead_labels and policy.unit == "word" and mode != OFFLINE:
        add_lookahead_labels(ids, kinds, labels)
    return TrainingExample(ids, positions, labels, kinds, events)


def add_lookahead_labels(ids: list[int], kinds: list[str], labels: list[int]) -> None:
    """Label the first source token after a WRITE with the next target (or stop) token.

    HF labels are shifted inside the model: ``labels[i]`` is predicted from token
    ``i - 1``, here the last token of the word just written.  At inference the token
    sampled there decides whether the word has ended; without this label nothing
    trains it when the policy READs next.
    """
    upcoming = IGNORE_INDEX
    for i in range(len(ids) - 1, 0, -1):
        if kinds[i] in ("target", "stop"):
            upcoming = ids[i]
        elif kinds[i] == "source" and kinds[i - 1] == "target":
            labels[i] = upcoming


def fixed_layout_order(example: TrainingExample) -> list[int]:
    """Indices of the example's tokens in fixed order: prefix, source, header, target, stop."""
    rank = {"prefix": 0, "source": 1, "header": 2, "target": 3, "refeed": 3, "stop": 3}
    return sorted(range(len(example)), key=lambda i: (rank[example.kinds[i]], i))


def fixed_layout_mask(example: TrainingExample, order: list[int]) -> torch.Tensor:
    """Boolean ``[n, n]`` mask for the fixed layout: row attends column iff it came no later.

    This is the policy-consistent attention mask of the paper's Figure 2 (right): the
    same visibility as causal attention over event order, written for tokens sorted
    by role.  Used as a cross-check of the event-order form.
    """
    physical = torch.tensor(order)
    return physical[None, :] <= physical[:, None]
