"""A talk over ``/v1/simul/realtime``: live input cut into sentences by the server
(``segmentation: auto``) or the client, a long session, and what a long session meets.

A real ``vllm serve`` on 127.0.0.1 with the tiny Llama; every sentence's translation is
compared with the transformers reference decoder's for that sentence alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets

from vllm_exposst import models
from vllm_exposst.models import ENGLISH_WORDS
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from .test_server import SERVER_ENV, free_port, serve_command, stop_process, wait_healthy

pytestmark = pytest.mark.server
IDLE_TIMEOUT = 4.0
LONG_WORDS = [w for w in ENGLISH_WORDS if len(w) > 1]  # "a." would read as an initial


class TalkServer:
    """``vllm serve`` with a short idle timeout (the pause tests wait past it)."""

    def __init__(self, base: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/simul/realtime"
        self.base = base
        options = {
            "exposst": {
                "policy": "wait-2",
                "slot_len": 4,
                "max_sessions": 12,
                "idle_timeout": IDLE_TIMEOUT,
            }
        }
        command = serve_command(
            base, options, self.port, "--host", "127.0.0.1", "--max-num-seqs", "16", "--seed", "0"
        )
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=SERVER_ENV
        )
        wait_healthy(self.process, self.url, log)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/simul/stats").json()

    def all_free(self, timeout: float = 30) -> dict:
        """Stats once no session is open and every KV block is free (or the last seen)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["open_sessions"] == 0 and stats["free_blocks"] == stats["total_blocks"]:
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    srv = TalkServer(base, tmp_path_factory.mktemp("talk") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oracle(server):
    """The reference decoder's translation of one sentence (server defaults), cached."""
    model, tokenizer = models.load(server.base)
    template = build_prompt(tokenizer)
    cache: dict[tuple, object] = {}

    def translate(source: str, policy: str = "wait-2", slot_len: int = 4):
        key = (source, policy, slot_len)
        if key not in cache:
            decoder = ReferenceDecoder(model, template, slot_len=slot_len)
            cache[key] = decoder.translate(source, policy)
        return cache[key]

    return translate


def sentence_text(rng: random.Random, low: int = 3, high: int = 9, end: str = ".") -> str:
    """Made-up words, the first capitalized, the last (two letters or more) with ``end``."""
    words = [rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(low, high) - 1)]
    return " ".join([*words, rng.choice(LONG_WORDS) + end]).capitalize()


def pieces(text: str, rng: random.Random, count: int = 6) -> list[str]:
    """The text cut at random characters (words split across appends)."""
    cuts = sorted(rng.sample(range(1, len(text)), k=min(count, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


class Client:
    """One WebSocket talk: send events, collect events per sentence."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    @classmethod
    async def open(cls, server: TalkServer, session: dict | None = None) -> Client:
        ws = await websockets.connect(server.ws_url, max_size=None)
        client = cls(ws)
        created = await client.recv()
        assert created["type"] == "session.created", created
        if session:
            await client.send({"type": "session.update", "session": session})
            updated = await client.recv()
            assert updated["type"] == "session.updated", updated
            client.session = updated["session"]
        return client

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def append(self, text: str) -> None:
        await self.send({"type": "input_text.append", "text": text})

    async def recv(self, timeout: float = 60) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(event)
        return event

    async def until(self, predicate, timeout: float = 60) -> dict:
        while True:
            event = await self.recv(timeout)
            if predicate(event):
                return event

    async def dones(self, count: int, timeout: float = 60) -> list[dict]:
        got = []
        while len(got) < count:
            event = await self.recv(timeout)
            assert event["type"] != "error", event
            if event["type"] == "response.output_text.done":
                got.append(event)
        return got

    def deltas(self, index: int) -> str:
        return "".join(
            e["delta"]
            for e in self.events
            if e["type"] == "response.output_text.delta" and e["sentence"] == index
        )

    async def close(self) -> None:
        await self.ws.close()


def check_sentences(client: Client, dones: list[dict], sources: list[str], oracle) -> None:
    """Each sentence: its source, in order, translated as the reference translates it alone
    (sentences overlap: their done events may come in any order)."""
    dones = sorted(dones, key=lambda d: d["sentence"])
    first = dones[0]["sentence"]
    assert [d["sentence"] for d in dones] == list(range(first, first + len(dones)))
    assert [d["source"] for d in dones] == sources
    for done in dones:
        ref = oracle(done["source"])
        assert done["text"] == ref.text, done["source"]
        assert done["delays"] == ref.delays, done["source"]
        assert client.deltas(done["sentence"]).strip() == ref.text


def test_auto_segmentation_translates_every_sentence_without_a_commit(server, oracle):
    rng = random.Random(3)
    sources = [sentence_text(rng, end=rng.choice([".", "!", "?", '."'])) for _ in range(12)]
    text = " ".join(sources)

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto"})
        for piece in pieces(text, rng, count=30):
            await client.append(piece)
        dones = await client.dones(len(sources))  # the last "." ends the last sentence
        await client.close()
        return client, dones

    client, dones = asyncio.run(scenario())
    check_sentences(client, dones, sources, oracle)
    assert {d["end"] for d in dones} == {"punctuation"}
    for event in client.events:  # every delta and waiting event names its sentence
        if event["type"] in ("response.output_text.delta", "input_text.waiting"):
            assert isinstance(event["sentence"], int)
    assert client.session["segmentation"] == "auto"
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"], stats


def test_auto_segmentation_cuts_at_the_word_cap_and_after_a_pause(server, oracle):
    rng = random.Random(4)
    words = [rng.choice(ENGLISH_WORDS) for _ in range(17)]  # no punctuation at all

    async def scenario():
        client = await Client.open(
            server, {"segmentation": "auto", "max_sentence_words": 7, "sentence_pause": 1.0}
        )
        await client.append(" ".join(words[:10]) + " ")
        first = await client.dones(1)
        await client.append(" ".join(words[10:]))  # "...word" with no space: the pause ends it
        started = time.monotonic()
        rest = await client.dones(2)
        waited = time.monotonic() - started
        await client.close()
        return client, first + rest, waited

    client, dones, waited = asyncio.run(scenario())
    sources = [" ".join(words[:7]), " ".join(words[7:14]), " ".join(words[14:])]
    check_sentences(client, dones, sources, oracle)
    assert [d["end"] for d in dones] == ["max_words", "max_words", "pause"]
    assert waited >= 1.0


def test_client_segmentation_names_sentences_and_overlaps_them(server, oracle):
    """Client mode: the next sentence starts at once while the previous one finishes."""
    rng = random.Random(5)
    sources = [sentence_text(rng, end="") for _ in range(4)]

    async def scenario():
        client = await Client.open(server)
        for source in sources:  # no waiting between sentences
            for piece in pieces(source, rng, count=3):
                await client.append(piece)
            await client.send({"type": "input_text.commit"})
        dones = await client.dones(len(sources))
        await client.close()
        return client, dones

    client, dones = asyncio.run(scenario())
    check_sentences(client, dones, sources, oracle)
    assert {d["end"] for d in dones} == {"commit"}
