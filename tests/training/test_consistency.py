"""Training layout, reference decoder and positions agree (design sections 4 and 6).

The independent reference throughout is one plain transformers forward pass with
explicit ``position_ids`` (and, for the fixed layout, an explicit 4-D mask).
"""

from __future__ import annotations

import random

import pytest
import torch

from vllm_exposst.models import ENGLISH_WORDS, GERMAN_WORDS
from vllm_exposst.reference import ReferenceDecoder
from vllm_exposst.training.examples import build_example, fixed_layout_mask, fixed_layout_order

from ..conftest import random_sentence

POLICIES = [
    "wait-1",
    "wait-2",
    "wait-3",
    "wait-5",
    "read-2/write-1",
    "read-3/write-2",
    "token-wait-2",
    "token-wait-4",
    "offline",
]


def pairs(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        yield (
            random_sentence(rng, ENGLISH_WORDS),
            random_sentence(rng, GERMAN_WORDS),
            rng.choice(POLICIES),
            rng.randint(1, 6),
        )


@torch.no_grad()
def one_pass_logprobs(model, ids, positions, mask=None) -> torch.Tensor:
    kwargs = {"attention_mask": mask} if mask is not None else {}
    out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), **kwargs)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


@pytest.mark.parametrize("mode", ["exposst", "shift"])
def test_training_layout_is_what_the_decoder_feeds(tiny_llama, mode):
    model, _, template = tiny_llama
    for source, target, policy, slot_len in pairs(seed=1, count=25):
        decoder = ReferenceDecoder(model, template, mode=mode, slot_len=slot_len)
        result = decoder.translate(source, policy, force_target=target)
        example = build_example(template, source, target, policy, mode=mode, slot_len=slot_len)
        # everything but the final stop token, which is predicted, never fed
        assert result.fed_ids == example.input_ids[:-1], (source, target, policy)
        assert result.fed_positions == example.position_ids[:-1], (source, target, policy)
        assert example.kinds[-1] == "stop" and example.input_ids[-1] == template.stop_id


def test_labels_cover_target_stop_and_lookaheads(tiny_llama):
    _, _, template = tiny_llama
    source, target = "a dog runs in the park", "ein hund läuft"
    example = build_example(template, source, target, "wait-1", slot_len=2, lookahead_labels=True)
    target_ids = [t for w in template.words_ids(target) for t in w]
    own = [i for i, k in enumerate(example.kinds) if k in ("target", "stop")]
    assert [example.labels[i] for i in own] == [*target_ids, template.stop_id]
    # a READ after a WRITE: the word's last token is trained to predict what comes next
    # in the target (the lookahead that ends the word): the next word's first token,
    # or the stop token once the target is complete
    expected_lookahead = {}
    for i, kind in enumerate(example.kinds):
        if kind == "source" and example.kinds[i - 1] == "target":
            later = [
                example.input_ids[j]
                for j in range(i, len(example))
                if example.kinds[j] in ("target", "stop")
            ]
            expected_lookahead[i] = later[0]
    assert expected_lookahead  # wait-1 interleaves
    others = {i for i, label in enumerate(example.labels) if label != -100} - set(own)
    assert others == set(expected_lookahead)
    assert all(example.labels[i] == t for i, t in expected_lookahead.items())
    assert example.labels[max(expected_lookahead)] == template.stop_id  # source outlasts target
    plain = build_example(template, source, target, "wait-1", slot_len=2)  # contract default
    assert {i for i, label in enumerate(plain.labels) if label != -100} == set(own)
    token_level = build_example(
        template, source, target, "token-wait-1", slot_len=2, lookahead_labels=True
    )
    assert {i for i, label in enumerate(token_level.labels) if label != -100} == {
        i for i, k in enumerate(token_level.kinds) if k in ("target", "stop")
    }


def test_incremental_exposst_logits_equal_one_forward_pass_of_the_training_layout(tiny):
    model, _, template = tiny
    for source, target, policy, slot_len in pairs(seed=2, count=12):
        decoder = ReferenceDecoder(model, template, slot_len=slot_len, record_logprobs=True)
        result = decoder.translate(source, policy, force_target=target)
        example = build_example(template, source, target, policy, slot_len=slot_len)
        full = one_pass_logprobs(model, example.input_ids, example.position_ids)
        predicting = [i - 1 for i, k in enumerate(example.kinds) if k in ("target", "stop")]
        reference = full[predicting]
        incremental = torch.stack(result.step_logprobs)
        assert incremental.shape == reference.shape
        assert (incremental - reference).abs().max().item() <= 1e-4, (source, policy)


def test_greedy_exposst_decoding_matches_its_one_pass_logits(tiny):
    """Unforced: every greedy choice is the argmax of the one-pass logits at its place."""
    model, _, template = tiny
    for source, _, policy, slot_len in pairs(seed=3, count=6):
        decoder = ReferenceDecoder(
            model, template, slot_len=slot_len, record_logprobs=True, max_target_tokens=24
        )
        result = decoder.translate(source, policy)
        full = one_pass_logprobs(model, result.fed_ids, result.fed_positions)
        kinds = _kinds(result, template)
        fed_targets = [i for i, kind in enumerate(kinds) if kind == "target"]
        for j, place in enumerate(fed_targets):
            assert result.fed_ids[place] == result.target_ids[j]
            assert (full[place - 1] - result.step_logprobs[j]).abs().max().item() <= 1e-4
            scores = full[place - 1].clone()
            if j == 0:  # the first target token is never the stop token
                scores[template.stop_id] = -float("inf")
            assert int(scores.argmax()) == result.target_ids[j]


def _kinds(result, template) -> list[str]:
    kinds = ["prefix"] * template.prefix_len
    header = False
    for kind, n in result.events:
        if kind == "W" and n and not header:
            kinds += ["header"] * template.header_len
            header = True
        kinds += [{"R": "source", "W": "target", "F": "refeed"}[kind]] * n
    return kinds


def test_fixed_layout_with_4d_mask_equals_the_event_order_form(tiny):
    model, _, template = tiny
    for source, target, policy, slot_len in pairs(seed=4, count=8):
        example = build_example(template, source, target, policy, slot_len=slot_len)
        order = fixed_layout_order(example)
        allowed = fixed_layout_mask(example, order)
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        ids = [example.input_ids[i] for i in order]
        positions = [example.position_ids[i] for i in order]
        fixed = one_pass_logprobs(model, ids, positions, mask=mask[None, None])
        event_order = one_pass_logprobs(model, example.input_ids, example.position_ids)
        assert (fixed - event_order[order]).abs().max().item() <= 1e-4


def test_positions_matter_shift_differs_from_exposst(tiny_llama):
    """Sanity check that the comparisons above can fail: a wrong layout is caught."""
    model, _, template = tiny_llama
    source, target = "a man walks in the park with a dog", "ein mann geht im park"
    logprobs = {}
    for mode in ("exposst", "shift"):
        decoder = ReferenceDecoder(model, template, mode=mode, slot_len=3, record_logprobs=True)
        logprobs[mode] = torch.stack(
            decoder.translate(source, "wait-2", force_target=target).step_logprobs
        )
    assert (logprobs["exposst"] - logprobs["shift"]).abs().max().item() > 1e-3
