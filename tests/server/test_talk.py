"""A talk over ``/v1/simul/realtime``: live input cut into sentences by the server
(``segmentation: auto``) or the client, a long session, and what a long session meets.

A real ``vllm serve`` on 127.0.0.1 with the tiny Llama; every sentence's translation is
compared with the transformers reference decoder's for that sentence alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets

from vllm_exposst import models
from vllm_exposst.defaults import MAX_SENTENCE_WORDS, SENTENCE_PAUSE, TALK_SENTENCES_IN_FLIGHT
from vllm_exposst.models import ENGLISH_WORDS
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder
from vllm_exposst.server.context import SIMUL_KEYS

from .test_server import SERVER_ENV, free_port, serve_command, stop_process, wait_healthy

pytestmark = pytest.mark.server
IDLE_TIMEOUT = 4.0
SMALL_INPUT_QUEUE = 3_000  # characters: small, so a test can pass it (the default: 1,000,000)
LONG_WORDS = [w for w in ENGLISH_WORDS if len(w) > 1]  # "a." would read as an initial


class TalkServer:
    """``vllm serve`` with a short idle timeout (the pause tests wait past it)."""

    def __init__(
        self,
        base: Path,
        log: Path,
        input_queue_chars: int | None = None,
        *extra: str,
        options: dict | None = None,
    ) -> None:
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
                **({"input_queue_chars": input_queue_chars} if input_queue_chars else {}),
                **(options or {}),
            }
        }
        command = serve_command(
            base,
            options,
            self.port,
            "--host",
            "127.0.0.1",
            "--max-num-seqs",
            "16",
            "--seed",
            "0",
            *extra,
        )
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=SERVER_ENV
        )
        wait_healthy(self.process, self.url, log)

    def stats(self) -> dict:
        if getattr(self, "http", None) is None:
            self.http = httpx.Client()  # one connection: a stats call per sentence is cheap
        return self.http.get(f"{self.url}/v1/simul/stats").json()

    def all_free(self, timeout: float = 30, poll: float = 0.2) -> dict:
        """Stats once no session is open, no request is queued or running and every KV
        block is free (or the last seen)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            idle = stats["running_requests"] == stats["waiting_requests"] == 0
            if (
                idle
                and stats["open_sessions"] == 0
                and stats["free_blocks"] == stats["total_blocks"]
            ):
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(poll)

    def stop(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    srv = TalkServer(base, tmp_path_factory.mktemp("talk") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory, model_cache):
    """A second server whose connections hold at most ``SMALL_INPUT_QUEUE`` characters."""
    base = models.tiny_model("llama", model_cache)
    srv = TalkServer(base, tmp_path_factory.mktemp("queue") / "serve.log", SMALL_INPUT_QUEUE)
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
        assert client.deltas(done["sentence"]) == ref.text


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
        # both parts at once: waiting for the first sentence's translation before the
        # second part would race it against the 1 s pause (a cold or busy server loses)
        await client.append(" ".join(words[:10]) + " ")
        await client.append(" ".join(words[10:]))  # "...word" with no space: the pause ends it
        started = time.monotonic()
        dones = await client.dones(3)  # in the order they finish (sentences overlap)
        waited = time.monotonic() - started
        await client.close()
        return client, sorted(dones, key=lambda done: done["sentence"]), waited

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


# -- hours, bounded: thousands of sentences through one session -----------------------
LONG_SENTENCES = 2000  # of 3 to 6 words: about 9,000 words, an hour of speech at 2.5 words/s
WINDOW = TALK_SENTENCES_IN_FLIGHT  # sentences the client has sent and not seen done
CHECK_EVERY = 20  # sentences between two points where the client waits for all to finish
RSS_GROWTH_MB = 64  # bound on the server processes' resident memory growth over the talk
LATENCY_FACTOR = 1.5  # median latency, last 200 sentences vs sentences 100-300


def server_rss(pid: int) -> int:
    """Resident bytes of the server process and its children (engine core, worker)."""
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def run_long_talk(server, count: int, oracle, rng: random.Random) -> dict:
    """One auto-segmented talk sent as fast as the server takes it (``WINDOW`` sentences
    ahead); every ``CHECK_EVERY`` sentences the client lets all finish and every KV
    block must be back; latency per sentence (sent to done); RSS every 100 sentences."""
    pool = [sentence_text(rng, 3, 6) for _ in range(30)]
    for source in pool:  # the oracle's answers, computed before the clock starts
        oracle(source)
    order = [rng.choice(pool) for _ in range(count)]
    latencies = [0.0] * count
    rss, mismatches, checks = [], [], []

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto"})
        sent_at: dict[int, float] = {}
        for start in range(0, count, CHECK_EVERY):
            end, sent, received = min(start + CHECK_EVERY, count), start, start
            while received < end:
                while sent < end and sent - received < WINDOW:
                    sent_at[sent] = time.monotonic()
                    await client.append(order[sent] + " ")
                    sent += 1
                (done,) = await client.dones(1)
                received += 1
                i = done["sentence"]
                latencies[i] = time.monotonic() - sent_at.pop(i)
                ref = oracle(order[i])
                if (done["source"], done["end"], done["text"], done["delays"]) != (
                    order[i],
                    "punctuation",
                    ref.text,
                    ref.delays,
                ):
                    mismatches.append((i, done))
            stats = await asyncio.to_thread(server.all_free, 10, 0.005)
            checks.append(stats["total_blocks"] - stats["free_blocks"] + stats["open_sessions"])
            client.events.clear()  # the test's own memory stays flat too
            if start % 100 == 0:
                rss.append(server_rss(server.process.pid))
        await client.close()

    asyncio.run(scenario())
    rss.append(server_rss(server.process.pid))
    return {"latencies": latencies, "rss": rss, "mismatches": mismatches, "checks": checks}


def test_a_long_talk_keeps_kv_blocks_memory_and_latency_flat(server, oracle):
    started = time.monotonic()
    out = run_long_talk(server, LONG_SENTENCES, oracle, random.Random(7))
    assert out["mismatches"] == [], out["mismatches"][:3]
    assert out["checks"] == [0] * len(out["checks"])  # no block used, no session open
    latencies, rss = out["latencies"], out["rss"]
    first = sorted(latencies[100:300])[100]  # medians; the first 100 warm the server up
    last = sorted(latencies[-200:])[100]
    growth = (rss[-1] - rss[1]) / 2**20  # from sentence 100 on
    print(
        f"\n{LONG_SENTENCES} sentences in {time.monotonic() - started:.0f} s; median latency "
        f"{1000 * first:.1f} ms (sentences 100-300) -> {1000 * last:.1f} ms (last 200); "
        f"RSS {rss[1] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB"
    )
    assert last <= LATENCY_FACTOR * first, (first, last)
    assert growth <= RSS_GROWTH_MB, [round(r / 2**20) for r in rss]


# -- what a long session meets ----------------------------------------------------------
def test_a_pause_longer_than_the_idle_timeout_does_not_end_an_auto_talk(server, oracle):
    """``sentence_pause`` ends the sentence; a talk with nothing in progress holds no
    engine session, so ``idle_timeout`` has nothing to close while the speaker is quiet."""
    rng = random.Random(8)
    half = "Two dogs run in the"
    later = sentence_text(rng)

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto", "sentence_pause": 1.0})
        await client.append(half)
        first = await client.dones(1)
        await asyncio.sleep(IDLE_TIMEOUT + 2)  # quiet for longer than the idle timeout
        await client.append(later + " ")
        second = await client.dones(1)
        await client.close()
        return client, first + second

    client, dones = asyncio.run(scenario())
    check_sentences(client, dones, [half, later], oracle)
    assert [d["end"] for d in dones] == ["pause", "punctuation"]
    assert not [e for e in client.events if e["type"] == "error"]


def test_a_client_sentence_left_open_past_the_idle_timeout_is_closed_and_the_talk_goes_on(
    server, oracle
):
    """Client segmentation: an open sentence with no input is a held engine session;
    ``idle_timeout`` closes it (an error naming the sentence), the next words start
    the next sentence."""
    later = "The girl eats an apple"

    async def scenario():
        client = await Client.open(server)
        await client.append("A man walks ")
        error = await client.until(lambda e: e["type"] == "error", timeout=IDLE_TIMEOUT + 10)
        await client.append(later)
        await client.send({"type": "input_text.commit"})
        (done,) = await client.dones(1)
        await client.close()
        return client, error, done

    client, error, done = asyncio.run(scenario())
    assert error["error"]["code"] == "idle_timeout" and error["sentence"] == 0
    assert done["sentence"] == 1
    check_sentences(client, [done], [later], oracle)
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"], stats


def test_a_dropped_connection_frees_its_talk_and_a_new_session_continues_it(server, oracle):
    """Reconnecting is a new session: the client sends again the sentence whose
    ``done`` it did not get (``source`` says which words each done sentence had)."""
    rng = random.Random(9)
    sources = [sentence_text(rng) for _ in range(5)]

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto"})
        await client.append(" ".join(sources[:3]) + " " + sources[3][: len(sources[3]) // 2])
        before = await client.dones(3)
        client.ws.transport.abort()  # the network drops: no closing handshake
        stats = await asyncio.to_thread(server.all_free)
        again = await Client.open(server, {"segmentation": "auto"})
        done_sources = {d["source"] for d in before}
        rest = [s for s in sources if s not in done_sources]
        await again.append(" ".join(rest) + " ")
        after = await again.dones(len(rest))
        await again.close()
        return client, before, stats, again, after, rest

    client, before, stats, again, after, rest = asyncio.run(scenario())
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats
    check_sentences(client, before, sources[:3], oracle)
    check_sentences(again, after, rest, oracle)
    assert rest == sources[3:]


def test_a_sentence_that_would_reach_the_position_limit_is_cut_and_the_talk_goes_on(server, oracle):
    rng = random.Random(10)
    words = [rng.choice(ENGLISH_WORDS) for _ in range(420)]  # no punctuation: no end
    tail = sentence_text(rng)

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto", "max_sentence_words": 5000})
        for i in range(0, len(words), 50):
            await client.append(" ".join(words[i : i + 50]) + " ")
        await client.send({"type": "input_text.commit"})
        await client.append(tail + " ")
        dones, total = [], len(words) + len(tail.split())
        while sum(len(d["source"].split()) for d in dones) < total:
            dones += await client.dones(1, timeout=120)
        await client.close()
        return client, sorted(dones, key=lambda d: d["sentence"])

    client, dones = asyncio.run(scenario())
    ends = [d["end"] for d in dones]
    assert ends[0] == "position_limit" and ends[-2:] == ["commit", "punctuation"], ends
    assert " ".join(d["source"] for d in dones[:-1]).split() == words  # every word, in order
    check_sentences(client, dones, [d["source"] for d in dones], oracle)


def test_bad_input_gets_clear_errors_and_every_session_keeps_working(server, oracle):
    rng = random.Random(11)
    sources = [sentence_text(rng) for _ in range(3)]

    async def scenario():
        client = await Client.open(server, {"segmentation": "auto"})
        other = await Client.open(server, {"segmentation": "auto"})
        await other.append(sources[0] + " ")
        errors = []
        bad_frames = [
            json.dumps({"type": "input_text.append", "text": "word " * 10_000}),  # 50,000 chars
            json.dumps({"type": "input_text.append", "text": "a man\x00 walks\x07 "}),
            '{"type": "input_text.append", "text": "a lone \\ud800 surrogate "}',
            b"\xff\xfe not UTF-8",  # a binary frame
            json.dumps({"type": "input_text.append", "text": "x" * 3000 + " "}),  # one long word
        ]
        for frame in bad_frames:
            await client.ws.send(frame)
            errors.append(await client.until(lambda e: e["type"] == "error"))
        # a binary frame with a good event works like a text frame
        good = {"type": "input_text.append", "text": sources[1] + " "}
        await client.ws.send(json.dumps(good).encode())
        (done,) = await client.dones(1)
        (other_done,) = await other.dones(1)
        # invalid UTF-8 in a text frame: the WebSocket protocol closes the connection (1007)
        await client.ws.send(b"\xff\xfe", text=True)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await client.until(lambda e: False, timeout=30)
        await other.append(sources[2] + " ")
        (other_second,) = await other.dones(1)
        await other.close()
        return client, other, errors, done, [other_done, other_second], closed.value

    client, other, errors, done, other_dones, closed = asyncio.run(scenario())
    codes = [e["error"]["code"] for e in errors]
    assert codes == [
        "input_too_large",
        "invalid_text",
        "invalid_text",
        "invalid_utf8",
        "context_length_exceeded",
    ]
    assert all(e["error"]["message"] for e in errors)
    assert closed.rcvd is not None and closed.rcvd.code == 1007, closed
    check_sentences(client, [done], [sources[1]], oracle)
    check_sentences(other, other_dones, [sources[0], sources[2]], oracle)
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats


def test_a_chat_sentence_past_the_engine_limit_fails_alone_and_the_server_keeps_serving(
    server, oracle
):
    """Refeed copies make a session hold more tokens than positions: a request that
    would pass ``max_model_len`` that way gets a 400, not a dead engine."""
    rng = random.Random(12)
    words = [rng.choice(ENGLISH_WORDS) for _ in range(480)]
    body = {"messages": [{"role": "user", "content": " ".join(words)}]}
    reply = httpx.post(f"{server.url}/v1/simul/chat/completions", json=body, timeout=300)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    source = sentence_text(rng)
    body = {"messages": [{"role": "user", "content": source}]}
    reply = httpx.post(f"{server.url}/v1/simul/chat/completions", json=body, timeout=60)
    assert reply.json()["choices"][0]["message"]["content"] == oracle(source).text
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats


def test_chat_completions_with_auto_segmentation_translate_sentence_by_sentence(server, oracle):
    from openai import OpenAI

    rng = random.Random(13)
    sources = [sentence_text(rng) for _ in range(4)]
    refs = [oracle(source) for source in sources]
    expected = " ".join(ref.text for ref in refs if ref.text)
    client = OpenAI(base_url=f"{server.url}/v1/simul", api_key="unused")
    simul = {"segmentation": "auto"}
    messages = [{"role": "user", "content": " ".join(sources)}]
    reply = client.chat.completions.create(
        model=str(server.base), messages=messages, extra_body={"simul": simul}
    )
    assert reply.choices[0].message.content == expected
    summary = reply.model_extra["simul"]
    assert [s["source"] for s in summary["sentences"]] == sources
    assert [s["text"] for s in summary["sentences"]] == [ref.text for ref in refs]
    assert [s["end"] for s in summary["sentences"]] == ["punctuation"] * 4
    offsets = [sum(len(s.split()) for s in sources[:i]) for i in range(4)]
    shifted = [o + d for o, ref in zip(offsets, refs, strict=True) for d in ref.delays]
    assert summary["delays"] == shifted  # source words of the whole text
    assert summary["source_words"] == offsets[-1] + len(sources[-1].split())
    stream = client.chat.completions.create(
        model=str(server.base), messages=messages, extra_body={"simul": simul}, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == expected
    indices = [c.model_extra["simul"]["sentence"] for c in chunks[:-1]]
    assert indices == sorted(indices) and set(indices) <= set(range(4))
    assert chunks[-1].model_extra["simul"]["sentences"] == summary["sentences"]


def test_a_client_sentence_past_the_limit_fails_alone_and_the_talk_goes_on(server, oracle):
    """Client segmentation keeps the client's sentence whole: past the limit it fails
    (an error naming it, never a done with part of it), and the talk goes on (words
    that arrive after the failure start the next sentence, as after any early end)."""
    rng = random.Random(14)
    words = [rng.choice(ENGLISH_WORDS) for _ in range(500)]
    later = sentence_text(rng)

    async def scenario():
        client = await Client.open(server)
        for i in range(0, len(words), 50):
            await client.append(" ".join(words[i : i + 50]) + " ")
        await client.send({"type": "input_text.commit"})
        error = await client.until(lambda e: e["type"] == "error", timeout=120)
        await client.append(later)
        await client.send({"type": "input_text.commit"})
        done = await client.until(
            lambda e: e["type"] == "response.output_text.done" and e["source"] == later, 120
        )
        await client.close()
        return client, error, done

    client, error, done = asyncio.run(scenario())
    assert error["error"]["code"] == "context_length_exceeded" and error["sentence"] == 0
    dones = [e for e in client.events if e["type"] == "response.output_text.done"]
    assert all(e["sentence"] != 0 for e in dones)  # the failed sentence reports no done
    assert done["end"] == "commit"
    check_sentences(client, [done], [later], oracle)
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats


# -- a client that sends faster than it is translated --------------------------------------
FAST_SENTENCES = 80
PING = dict(ping_interval=0.5, ping_timeout=2)  # the client's keepalive, short on purpose


async def open_fast_client(server: TalkServer) -> Client:
    """A client whose library keeps reading (no queue bound) and pings every 0.5 s: were the
    server to stop reading the socket, its pong would wait behind unread frames and the
    client would close with 1011 (keepalive ping timeout) after 2 s."""
    ws = await websockets.connect(server.ws_url, max_size=None, max_queue=None, **PING)
    client = Client(ws)
    assert (await client.recv())["type"] == "session.created"
    await client.send({"type": "session.update", "session": {"segmentation": "auto"}})
    assert (await client.recv())["type"] == "session.updated"
    return client


@pytest.mark.parametrize("read_while_sending", [True, False])
def test_a_talk_sent_faster_than_it_is_translated_keeps_its_connection_and_every_sentence(
    server, oracle, read_while_sending
):
    rng = random.Random(11 + read_while_sending)
    pool = [sentence_text(rng, 3, 8) for _ in range(20)]  # the oracle translates 20 sentences
    sources = [rng.choice(pool) for _ in range(FAST_SENTENCES)]
    text = " ".join(sources) + " "
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]  # words split across appends

    async def scenario():
        client = await open_fast_client(server)
        reader = None
        if read_while_sending:
            reader = asyncio.ensure_future(client.dones(len(sources), timeout=120))
        for chunk in chunks:  # as fast as the socket takes them
            await client.append(chunk)
        if reader is None:
            await asyncio.sleep(3)  # reads nothing for longer than the ping timeout
            dones = await client.dones(len(sources), timeout=120)
        else:
            dones = await reader
        await client.close()
        return client, dones

    client, dones = asyncio.run(scenario())
    assert client.ws.close_code in (None, 1000), (client.ws.close_code, client.ws.close_reason)
    check_sentences(client, dones, sources, oracle)
    assert {d["end"] for d in dones} == {"punctuation"}
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats


def test_input_past_the_queue_bound_gets_an_error_and_the_talk_goes_on(small_queue_server, oracle):
    """Frames of whole sentences, sent in one burst far past ``input_queue_chars``: the
    dropped ones are named by ``input_queue_full`` errors, every other sentence is
    translated in order, and the session takes input again once the queue drained."""
    rng = random.Random(5)
    per_frame, frames = 8, 60  # 480 sentences, about 4 times the queue bound
    pool = [sentence_text(rng, 3, 6) for _ in range(20)]
    batches = [[rng.choice(pool) for _ in range(per_frame)] for _ in range(frames)]
    texts = [" ".join(batch) + " " for batch in batches]
    assert sum(map(len, texts)) > 3 * SMALL_INPUT_QUEUE
    server = small_queue_server

    async def scenario():
        client = await open_fast_client(server)
        for piece in texts:
            await client.append(piece)
        errors, dones = [], []
        while True:  # until every sentence not dropped is done
            event = await client.recv(timeout=120)
            if event["type"] == "error":
                errors.append(event["error"])
            elif event["type"] == "response.output_text.done":
                dones.append(event)
            dropped = sum(e["dropped_events"] for e in errors)
            if len(dones) == (frames - dropped) * per_frame and errors:
                break
        last = sentence_text(rng)
        await client.append(last + " ")
        (after,) = await client.dones(1)
        await client.close()
        return errors, dones, after, last

    errors, dones, after, last = asyncio.run(scenario())
    assert errors and {e["code"] for e in errors} == {"input_queue_full"}, errors
    assert all(e["type"] == "rate_limit_error" and e["retry_after"] == 1 for e in errors)
    dones = sorted(dones, key=lambda d: d["sentence"])
    sent = [s for batch in batches for s in batch]
    kept = [d["source"] for d in dones]
    it = iter(sent)  # the kept sentences are the sent ones in order, whole frames left out
    assert all(source in it for source in kept)
    assert len(sent) - len(kept) == per_frame * sum(e["dropped_events"] for e in errors)
    assert all(e["dropped_chars"] > 0 for e in errors)  # sizes as received, JSON included
    for done in dones:
        assert done["text"] == oracle(done["source"]).text
    assert after["source"] == last and after["text"] == oracle(last).text
    stats = server.all_free()
    assert stats["free_blocks"] == stats["total_blocks"] and stats["open_sessions"] == 0, stats


# a value other than the server's default for each setting a session may change
CHANGED = {
    "policy": "wait-3",
    "slot_len": 6,
    "mode": "shift",
    "source_lang": "German",
    "target_lang": "English",
    "refeed": False,
    "segmentation": "auto",
    "max_sentence_words": 7,
    "sentence_pause": 1.0,
}


def test_session_update_omitted_keeps_null_is_the_default_or_switches_a_limit_off(server):
    """Omitted keeps the value; ``null`` gives the server's default, except for the word
    cap and the pause, which it switches off (documented in api.md)."""
    assert set(CHANGED) == set(SIMUL_KEYS)

    async def scenario():
        client = await Client.open(server)
        default = client.events[0]["session"]
        seen = {}
        for key, value in CHANGED.items():
            await client.send({"type": "session.update", "session": {key: value}})
            kept = (await client.recv())["session"]
            assert kept[key] == value and all(kept[k] == v for k, v in seen.items()), key
            seen[key] = value
        for key in CHANGED:
            await client.send({"type": "session.update", "session": {key: None}})
            updated = await client.recv()
            assert updated["type"] == "session.updated", updated
            off = key in ("max_sentence_words", "sentence_pause")
            assert updated["session"][key] == (None if off else default[key]), key
        await client.close()
        return default

    default = asyncio.run(scenario())
    assert default["max_sentence_words"] and default["sentence_pause"]  # on by default


def test_null_word_cap_and_pause_let_a_long_unpunctuated_sentence_wait_for_its_commit(
    server, oracle
):
    rng = random.Random(21)
    words = [rng.choice(ENGLISH_WORDS) for _ in range(MAX_SENTENCE_WORDS + 10)]
    source = " ".join(words)
    off = {"segmentation": "auto", "max_sentence_words": None, "sentence_pause": None}

    async def scenario():
        client = await Client.open(server, off)
        await client.append(source + " ")  # every word complete: none waits for the commit
        with contextlib.suppress(TimeoutError):  # past the default pause: nothing ends it
            await client.until(lambda e: e["type"].endswith(".done"), SENTENCE_PAUSE + 1.5)
        early = [e for e in client.events if e["type"] == "response.output_text.done"]
        await client.send({"type": "input_text.commit"})
        dones = early or await client.dones(1)
        await client.close()
        return client, dones

    client, dones = asyncio.run(scenario())
    # one sentence of every word: no cut at the default cap, none at the pause (the
    # random model may reach its translation's length limit first: target_limit)
    assert len(dones) == 1 and dones[0]["end"] in ("commit", "target_limit")
    check_sentences(client, dones, [source], oracle)
    from openai import OpenAI

    chat = OpenAI(base_url=f"{server.url}/v1/simul", api_key="unused")
    reply = chat.chat.completions.create(
        model=str(server.base),
        messages=[{"role": "user", "content": source}],
        extra_body={"simul": {"segmentation": "auto", "max_sentence_words": None}},
    )
    sentences = reply.model_extra["simul"]["sentences"]
    assert [s["source"] for s in sentences] == [source]
