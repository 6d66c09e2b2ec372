"""The reference decoder's three cache modes, its delays and its cost accounting."""

from __future__ import annotations

import pytest
import torch

from vllm_exposst.layout import PositionLimitError
from vllm_exposst.reference import ReferenceDecoder

SOURCE = "two people walk near the old house with a big black dog"
TARGET = "zwei leute gehen nahe dem alten haus mit einem großen schwarzen hund"


def minimum_tokens(template, result) -> int:
    """Prefix + header + source tokens read + target tokens: each computed once.

    A sentence cut at the target cap never computes its last target token."""
    source_read = sum(n for kind, n in result.events if kind == "R")
    unfed = len(result.fed_ids) - result.tokens_computed
    return template.prefix_len + source_read + template.header_len + len(result.target_ids) - unfed


@pytest.mark.parametrize("policy", ["wait-1", "wait-3", "read-2/write-2", "token-wait-3"])
def test_exposst_computes_every_token_exactly_once(tiny_llama, policy):
    """The contract's first rule (refeed off): no token is ever computed twice."""
    model, _, template = tiny_llama
    result = ReferenceDecoder(model, template, slot_len=4, refeed=False).translate(SOURCE, policy)
    assert not any(kind == "F" for kind, _ in result.events)
    assert result.tokens_computed == minimum_tokens(template, result)
    assert len(set(result.fed_positions)) == len(result.fed_positions)
    recompute = ReferenceDecoder(model, template, mode="recompute").translate(
        SOURCE, policy, force_target=TARGET
    )
    source_tokens = sum(len(w) for w in template.words_ids(SOURCE))
    assert sum(n for kind, n in recompute.events if kind == "R") == source_tokens
    assert recompute.tokens_computed > minimum_tokens(template, recompute)


@pytest.mark.parametrize("policy", ["wait-1", "wait-3", "read-2/write-2", "token-wait-3"])
def test_refeed_copies_the_last_target_token_at_its_own_position(tiny_llama, policy):
    """The refeed rule: after READs that follow target tokens, before the next model query,
    the last target token is fed once more with the position it already has; nothing else
    is computed twice."""
    model, _, template = tiny_llama
    result = ReferenceDecoder(model, template, slot_len=4).translate(SOURCE, policy)
    ids, positions = result.fed_ids, result.fed_positions
    index = template.prefix_len
    header = False
    last_target = None  # (id, position) of the last target token fed
    copies = 0
    previous = None
    for kind, n in result.events:
        if kind == "W" and not header:
            index += template.header_len
            header = True
        if kind == "F":
            assert previous == "R" and last_target is not None, result.events
            assert (ids[index], positions[index]) == last_target
            copies += 1
        elif kind == "W" and n:
            # no target token is predicted straight from a source token once one was written
            assert not (previous == "R" and last_target is not None), result.events
            last_target = (ids[index + n - 1], positions[index + n - 1])
        index += n
        previous = kind
    assert copies >= 1
    assert result.tokens_computed == minimum_tokens(template, result) + copies
    distinct = len(set(positions[: result.tokens_computed]))
    assert distinct == result.tokens_computed - copies  # a copy shares only its original's


@torch.no_grad()
def test_recompute_equals_the_offline_prompt_at_every_step(tiny):
    """Each target token's distribution equals one pass over the offline prompt
    holding the source read so far and the target so far."""
    model, _, template = tiny
    decoder = ReferenceDecoder(model, template, mode="recompute", record_logprobs=True)
    result = decoder.translate(SOURCE, "wait-2", force_target=TARGET)
    source_words = template.words_ids(SOURCE)
    read_tokens, written = 0, 0
    checked = 0
    for kind, n in result.events:
        if kind == "R":
            read_tokens += n
            continue
        for _ in range(n):
            source_ids = [t for w in source_words for t in w][:read_tokens]
            ids = [*template.prefix_ids, *source_ids, *template.header_ids]
            ids += result.target_ids[:written]
            out = model(input_ids=torch.tensor([ids]))  # default positions 0..n-1
            reference = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            assert (reference - result.step_logprobs[written]).abs().max().item() <= 1e-4
            written += 1
            checked += 1
    assert checked == len(result.target_ids) > 5


@pytest.mark.parametrize("mode", ["exposst", "shift", "recompute"])
def test_offline_policy_in_any_mode_equals_plain_greedy_generation(tiny, mode):
    model, tokenizer, template = tiny
    prompt = template.offline_prompt(SOURCE)
    generated = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=20,
        min_new_tokens=1,
        do_sample=False,
        eos_token_id=template.stop_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, len(prompt) :].tolist()
    if template.stop_id in generated:
        generated = generated[: generated.index(template.stop_id)]
    # one slot exactly as long as the source makes ExPosST positions contiguous
    slot_len = sum(len(w) for w in template.words_ids(SOURCE))
    decoder = ReferenceDecoder(
        model, template, mode=mode, slot_len=slot_len, max_target_tokens=len(generated)
    )
    assert decoder.translate(SOURCE, "offline").target_ids == generated


def test_delays_count_source_words_read_when_each_target_word_was_written(tiny_llama):
    model, _, template = tiny_llama
    result = ReferenceDecoder(model, template).translate(SOURCE, "wait-3", force_target=TARGET)
    n_source, n_target = len(SOURCE.split()), len(TARGET.split())
    assert result.text == TARGET
    expected = [min(3 + i, n_source) for i in range(n_target)]
    assert result.delays == expected


def test_adaptive_policy_runs_and_reads_when_unsure(tiny_llama):
    model, _, template = tiny_llama
    decoder = ReferenceDecoder(model, template, max_target_tokens=30)
    eager = decoder.translate(SOURCE, "adaptive-0.0")  # always confident: writes after 1 word
    shy = decoder.translate(SOURCE, "adaptive-1.0")  # never confident: reads everything first
    assert eager.delays and eager.delays[0] == 1
    assert shy.delays and all(d == len(SOURCE.split()) for d in shy.delays[1:])


def test_passing_the_position_limit_is_a_clear_error(tiny_llama):
    model, _, template = tiny_llama
    decoder = ReferenceDecoder(model, template, slot_len=200, max_position=template.prefix_len + 50)
    with pytest.raises(PositionLimitError):
        decoder.translate(SOURCE, "wait-2", force_target=TARGET)


def test_unknown_mode_is_rejected(tiny_llama):
    model, _, template = tiny_llama
    with pytest.raises(ValueError, match="mode"):
        ReferenceDecoder(model, template, mode="bogus")


def test_without_a_cap_the_limit_counts_the_source_read(tiny_llama):
    """The target length limit is twice the source tokens *read* + 16: a translation
    that reaches it with source unread reads on (whatever the policy says), and one
    that reaches it with the whole source read stops there."""
    model, _, template = tiny_llama
    long_target = " ".join([TARGET] * 6)  # far more than the limit allows
    result = ReferenceDecoder(model, template, slot_len=4).translate(
        SOURCE, "read-1/write-20", force_target=long_target
    )
    events = [event for event in result.events if event[0] != "F"]
    read = target = forced = 0
    for (kind, count), after in zip(events, [*events[1:], None], strict=True):
        read += count if kind == "R" else 0
        target += count if kind == "W" else 0
        assert target <= 2 * read + 16
        if kind == "W" and target == 2 * read + 16 and after is not None:
            assert after[0] == "R"  # the policy wanted 20 words: the limit made it read
            forced += 1
    source_tokens = sum(len(w) for w in template.words_ids(SOURCE))
    assert read == source_tokens
    assert len(result.target_ids) == 2 * source_tokens + 16
    assert forced >= 2
