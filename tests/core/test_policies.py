"""Policies of design section 3."""

from __future__ import annotations

import pytest

from vllm_exposst.policies import (
    Adaptive,
    Offline,
    PolicyState,
    ReadWrite,
    WaitK,
    parse_policy,
    parse_policy_mix,
)
from vllm_exposst.training.examples import policy_events


def trace(policy, n_source: int, n_target: int) -> str:
    """The READ/WRITE string a policy gives with a known target (one unit per event)."""
    steps = policy_events(policy, [[0]] * n_source, [[1]] * n_target)
    return "".join(kind for kind, _ in steps)


def test_wait_k_reads_k_then_alternates_then_writes_to_the_end():
    assert trace(WaitK(2), 5, 6) == "RRWRWRWRWWW"
    assert trace(WaitK(1), 3, 3) == "RWRWRW"
    assert trace(WaitK(9), 3, 2) == "RRRWW"


def test_end_of_target_before_end_of_source_means_read():
    assert trace(WaitK(1), 5, 2) == "RWRWRRR"


def test_read_n_write_m():
    assert trace(ReadWrite(2, 1), 6, 4) == "RRWRRWRRWW"
    assert trace(ReadWrite(3, 2), 6, 5) == "RRRWWRRRWWW"


def test_offline_reads_everything_first():
    assert trace(Offline(), 4, 3) == "RRRRWWW"


def test_adaptive_writes_when_confident_and_reads_otherwise():
    policy = Adaptive(0.5, min_read=2)
    assert policy.decide(PolicyState(1, 0, False, None)) == "R"
    assert policy.decide(PolicyState(2, 0, False, None)) == "W"  # first write after min_read
    assert policy.decide(PolicyState(3, 1, False, 0.7)) == "W"
    assert policy.decide(PolicyState(3, 1, False, 0.3)) == "R"
    assert policy.decide(PolicyState(3, 1, True, 0.1)) == "W"  # source done: write
    with pytest.raises(ValueError, match="confidence"):
        policy.decide(PolicyState(3, 1, False, None))


def test_adaptive_has_no_training_layout():
    with pytest.raises(ValueError, match="confidence"):
        trace(Adaptive(0.5), 3, 3)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("wait-3", WaitK(3)),
        ("Wait-K:4", WaitK(4)),
        ("wait5", WaitK(5)),
        ("token-wait-2", WaitK(2, unit="token")),
        ("read-2/write-1", ReadWrite(2, 1)),
        ("read-2-write-3", ReadWrite(2, 3)),
        ("adaptive-0.6", Adaptive(0.6)),
        ("adaptive:0.25-min-3", Adaptive(0.25, 3)),
        ("offline", Offline()),
    ],
)
def test_parse_policy(spec, expected):
    policy = parse_policy(spec)
    assert policy == expected
    assert parse_policy(policy.spec) == policy  # canonical form round-trips


@pytest.mark.parametrize("spec", ["wait-0", "wait-x", "adaptive-1.5", "read-0/write-1", "", "k3"])
def test_bad_policy_strings_are_rejected_with_a_message(spec):
    with pytest.raises(ValueError, match="policy|must be|threshold"):
        parse_policy(spec)


def test_policy_mix():
    assert parse_policy_mix("wait-k:1-9") == [WaitK(k) for k in range(1, 10)]
    assert parse_policy_mix("wait-1,read-2/write-1") == [WaitK(1), ReadWrite(2, 1)]
    with pytest.raises(ValueError, match="empty"):
        parse_policy_mix("wait-k:5-2")
