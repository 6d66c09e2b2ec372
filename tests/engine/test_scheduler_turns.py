"""The scheduler's word scan per WRITE turn: incremental, and fresh for every turn.

``ExposstScheduler._update_request_with_output`` asks after every step where the
turn's words begin; it keeps one :class:`~vllm_exposst.prompts.WordStarts` per
session and turn instead of rescanning the turn.  Checked here against the full
rescan (:func:`~vllm_exposst.prompts.word_starts`) on random turns, including a new
chunk (new sampling params, another carried word) and a stopped turn's cut outputs.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from vllm_exposst.prompts import word_starts
from vllm_exposst.scheduler import ExposstScheduler


def _scheduler(table: list[bool]) -> ExposstScheduler:
    scheduler = object.__new__(ExposstScheduler)  # only the word-scan state is used
    scheduler._word_start = table
    scheduler._turn_words = {}
    return scheduler


def _request(args: dict) -> SimpleNamespace:
    params = SimpleNamespace(extra_args={"exposst": args})
    return SimpleNamespace(request_id="s-1", sampling_params=params, output_token_ids=[])


def test_turn_scans_equal_the_full_rescan_over_random_turns():
    rng = random.Random(22)
    table = [rng.random() < 0.3 for _ in range(20)]
    scheduler = _scheduler(table)
    request = _request({"max_word_tokens": 3, "carried": 0})
    for _ in range(40):  # turns of one session
        args = {"max_word_tokens": rng.randint(1, 5), "carried": rng.randint(0, 4)}
        # a new chunk: vLLM sets new sampling params and clears the outputs
        request.sampling_params = SimpleNamespace(extra_args={"exposst": args})
        request.output_token_ids = []
        for _ in range(rng.randint(1, 30)):  # steps of the turn
            request.output_token_ids.append(rng.randrange(22))
            scan = scheduler._turn_word_starts(request, args)
            expected = word_starts(
                request.output_token_ids, table, args["max_word_tokens"], args["carried"]
            )
            assert scan.extend(request.output_token_ids) == expected
        if len(request.output_token_ids) > 2 and rng.random() < 0.5:  # a stop cuts outputs
            del request.output_token_ids[-2:]
            scan = scheduler._turn_word_starts(request, args)
            expected = word_starts(
                request.output_token_ids, table, args["max_word_tokens"], args["carried"]
            )
            assert scan.extend(request.output_token_ids) == expected
    assert list(scheduler._turn_words) == ["s-1"]  # one entry per session, not per turn
