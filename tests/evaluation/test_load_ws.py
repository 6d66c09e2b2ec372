"""eval/load_ws.py's latencies from a scripted event stream: what each READ-to-WRITE
figure counts (every delta, the tail, and each READ's first word)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from .eval_scripts import EVAL, load_script


@pytest.fixture(scope="module")
def load_ws():
    sys.path.insert(0, str(EVAL))  # the script imports its sibling serving.py
    try:
        yield load_script("load_ws")
    finally:
        sys.path.remove(str(EVAL))


class ScriptedSocket:
    """Server events in order, as a WebSocket's ``recv`` gives them."""

    def __init__(self, events: list[dict]) -> None:
        self.events = [json.dumps(event) for event in events]

    async def recv(self) -> str:
        return self.events.pop(0)


def delta(read: int) -> dict:
    return {"type": "response.output_text.delta", "source_words_read": read, "delta": " x"}


def test_first_word_per_read_counts_each_read_once_and_the_tail_once(load_ws):
    # 5 source words; wait-3: word 3 unlocks two deltas, 4 one, the last word (5) three
    events = [delta(3), delta(3), delta(4), delta(5), delta(5), delta(5)]
    events.append({"type": "response.output_text.done", "text": "x " * 6, "tokens_computed": 90})
    latencies, words, tail, tokens, first = [], [], [], [], []
    sent_at = [0.0] * 5  # every word sent at time 0: a latency is the time of receipt
    asyncio.run(
        load_ws.receive_sentence(
            ScriptedSocket(events), sent_at, latencies, words, tail, tokens, first
        )
    )
    assert (len(latencies), len(tail), len(first)) == (3, 3, 3)
    # each READ's first delta: the first of word 3's, word 4's, the first of the tail
    arrivals = sorted(latencies + tail)
    assert first == [arrivals[0], arrivals[2], arrivals[3]]
    assert words == [6] and tokens == [90]
