"""``/v1/simul/alignatt`` driven by WhisperLiveKit's own translation client.

WhisperLiveKit 0.2.26 (installed without its dependencies by scripts/setup.sh) sends
text to a remote translation server with ``whisperlivekit.translation_alignatt``: a
plain websockets client fed with recognized words (``ASRToken``).  The tests load that
module without the package's ``__init__`` (which imports the speech stack), feed it
words instead of audio, and compare what it shows with the transformers reference
decoder's translation of each sentence alone.  The protocol's errors are checked
with a client written from the protocol (the ``init``/``update`` messages the module
sends).
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import json
import random
import sys
import threading
import time
import types

import httpx
import pytest
import websockets
import webvtt

from vllm_exposst import models

from .test_talk import TalkServer, oracle, sentence_text  # noqa: F401  (module fixture)

pytestmark = pytest.mark.server


def whisperlivekit_client():
    """``(AlignAttRemoteEngine, ASRToken, HypothesisTail)`` from the installed package,
    its submodules imported without running its ``__init__``."""
    if "whisperlivekit" not in sys.modules:
        spec = importlib.util.find_spec("whisperlivekit")
        assert spec is not None, "whisperlivekit is installed by scripts/setup.sh"
        package = types.ModuleType("whisperlivekit")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["whisperlivekit"] = package
    from whisperlivekit.timed_objects import ASRToken, HypothesisTail
    from whisperlivekit.translation_alignatt import AlignAttRemoteEngine

    return AlignAttRemoteEngine, ASRToken, HypothesisTail


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    """The talk server (wait-2, slot 4, 12 sessions) without the prefix cache, so that
    each sentence computes its own KV like the reference decoder."""
    base = models.tiny_model("llama", model_cache)
    log = tmp_path_factory.mktemp("alignatt") / "serve.log"
    srv = TalkServer(base, log, None, "--no-enable-prefix-caching")
    srv.alignatt_url = srv.ws_url.replace("/realtime", "/alignatt")
    yield srv
    srv.stop()


class Speaker:
    """WhisperLiveKit's client for one listener language, fed word by word."""

    def __init__(self, server: TalkServer, latency: str = "balanced") -> None:
        engine_class, self.token, self.tail = whisperlivekit_client()
        engine = engine_class(
            url=server.alignatt_url, source_language="en", preset=None, latency=latency
        )
        self.client = engine.new_session("de")
        self.clock = 0.0
        self.segments: list[str] = []  # validated (final) translations, in order
        self.buffers: list[str] = []  # the partial translation after each call

    def say(self, sentence: str, tail: str | None = None) -> None:
        for word in sentence.split():
            self.clock += 0.3
            items = [self.token(self.clock, self.clock + 0.25, " " + word)]
            if tail:
                items.append(self.tail(self.clock, self.clock + 0.5, tail))
            self.client.insert_tokens(items)
            self.step()

    def step(self) -> None:
        segment, buffer = self.client.process()
        if segment is not None and segment.text:
            self.segments.append(segment.text)
        self.buffers.append(buffer.text or "")

    def close(self) -> None:
        """Close the client's connection (WhisperLiveKit keeps it for the session's life)."""
        if self.client._ws is not None:
            self.client._ws.close()

    def drain(self, count: int, timeout: float = 120) -> None:
        """Call ``process`` (as WhisperLiveKit's worker does) until ``count`` segments."""
        deadline = time.monotonic() + timeout
        while len(self.segments) < count:
            assert time.monotonic() < deadline, f"{len(self.segments)} of {count} segments"
            self.step()
            time.sleep(0.05)


def test_whisperlivekit_client_gets_each_sentence_as_the_reference_translates_it(
    server,
    oracle,  # noqa: F811
):
    rng = random.Random(3)
    sentences = [sentence_text(rng) for _ in range(3)]
    speaker = Speaker(server)
    for sentence in sentences:
        speaker.say(sentence)
    speaker.drain(len(sentences))
    speaker.close()
    assert speaker.segments == [oracle(s).text.strip() for s in sentences]
    # the partial translation only grows within an utterance, and is where the final starts
    for before, after in zip(speaker.buffers, speaker.buffers[1:], strict=False):
        assert not (before and after) or after.startswith(before)
    assert server.all_free()["open_sessions"] == 0


def test_the_unstable_tail_is_not_read(
    server,
    oracle,  # noqa: F811
):
    """Tail words ("balanced" sends them) are not source: the result is the committed
    words' translation."""
    rng = random.Random(5)
    sentence = sentence_text(rng)
    speaker = Speaker(server, latency="balanced")
    speaker.say(sentence, tail="zebra quantum")
    speaker.drain(1)
    speaker.close()
    assert speaker.segments == [oracle(sentence).text.strip()]


def test_many_whisperlivekit_clients_at_once(
    server,
    oracle,  # noqa: F811
):
    rng = random.Random(11)
    talks = [[sentence_text(rng) for _ in range(2)] for _ in range(6)]
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            speaker = Speaker(server)
            for sentence in talks[i]:
                speaker.say(sentence)
            speaker.drain(len(talks[i]))
            speaker.close()
            results[i] = speaker.segments
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(talks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    for i, talk in enumerate(talks):
        assert results[i] == [oracle(s).text.strip() for s in talk], i
    stats = server.all_free()
    assert stats["open_sessions"] == 0 and stats["free_blocks"] == stats["total_blocks"]


def test_a_dropped_connection_frees_its_session_and_the_client_resumes_append_only(
    server,
    oracle,  # noqa: F811
):
    rng = random.Random(17)
    sentence = sentence_text(rng, low=7, high=9)
    words = sentence.split()
    speaker = Speaker(server)
    speaker.say(" ".join(words[:5]))
    shown = speaker.buffers[-1]
    assert shown, "wait-2 writes before the fifth word"
    speaker.client._ws.close()  # the network drops the connection mid-utterance
    assert server.all_free()["open_sessions"] == 0
    time.sleep(1.2)  # the client's first reconnect backoff
    speaker.say(" ".join(words[5:]))
    speaker.drain(1)
    speaker.close()
    (segment,) = speaker.segments
    # reconnected with accepted_target_prefix: what was on screen stays, the rest follows
    assert segment.startswith(shown)
    whole = oracle(sentence).text.split()
    assert segment.split()[len(shown.split()) :] == whole[len(shown.split()) :]


async def exchange(ws, message) -> dict:
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(await asyncio.wait_for(ws.recv(), 60))


INIT = {"type": "init", "protocol_version": 1, "source_lang": "en", "target_lang": "de"}


def update(seq: int, words: list[str], final: bool = False) -> dict:
    return {
        "type": "update",
        "seq": seq,
        "utterance_id": 0,
        "words": [[w, None, None] for w in words],
        "clock_ms": 0,
        "is_final": final,
    }


def test_bad_messages_get_the_protocols_errors_and_the_connection_goes_on(
    server,
    oracle,  # noqa: F811
):
    async def scenario():
        async with websockets.connect(server.alignatt_url) as ws:
            codes = []
            for bad in [
                "not json",
                {"type": "update", "seq": 1, "utterance_id": 0, "words": []},  # before init
                {**INIT, "protocol_version": 2},
                {**INIT, "source_lang": "fr"},
                {**INIT, "preset": "no-such-adapter"},
                {"type": "nope"},
            ]:
                codes.append(await exchange(ws, bad))
            ok = await exchange(ws, INIT)
            again = await exchange(ws, INIT)
            bad_words = await exchange(ws, {**update(1, []), "words": [[7, 0, 1]]})
            done = await exchange(ws, update(2, ["a", "man", "walks."], final=True))
            # the room follows the connection: its subtitles hold the sentence
            url = f"{server.url}/simul/subtitles/{ok['session']}.vtt"
            vtt = httpx.get(url, params={"token": ok["listen_token"]}).text
            return codes, ok, again, bad_words, done, vtt

    codes, ok, again, bad_words, done, vtt = asyncio.run(scenario())
    assert [e["code"] for e in codes] == [
        "bad_protocol",
        "bad_protocol",
        "bad_protocol",
        "unsupported_direction",
        "bad_protocol",
        "bad_protocol",
    ]
    assert all(e["type"] == "error" and e["message"] for e in codes)
    assert codes[3]["supported"] == ["en-de"]
    assert ok["type"] == "init_ok" and ok["direction"] == "en-de" and ok["listen_token"]
    assert again["code"] == "bad_protocol" and bad_words["code"] == "bad_protocol"
    assert done["type"] == "translation" and done["final"] and done["seq"] == 2
    assert done["committed_text"] == oracle("a man walks.").text.strip()
    assert done["buffer_text"] == ""
    (cue,) = webvtt.from_string(vtt).captions
    assert html.unescape(cue.text) == done["committed_text"]  # WebVTT escapes &, <, >
    assert server.all_free()["open_sessions"] == 0


def test_past_max_speakers_a_client_is_told_busy(server):
    limit = server.stats()["max_speakers"]
    deadline = time.monotonic() + 30  # the tests before closed their clients
    while server.stats()["speakers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.stats()["speakers"] == 0

    async def scenario():
        held = [await websockets.connect(server.alignatt_url) for _ in range(limit)]
        for ws in held:
            assert (await exchange(ws, INIT))["type"] == "init_ok"
        extra = await websockets.connect(server.alignatt_url)
        busy = json.loads(await asyncio.wait_for(extra.recv(), 30))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await asyncio.wait_for(extra.recv(), 30)
        for ws in held:
            await ws.close()
        return busy, closed.value.rcvd.code

    busy, code = asyncio.run(scenario())
    assert busy["type"] == "error" and busy["code"] == "busy" and code == 1013
    assert server.all_free()["speakers"] == 0


def test_updates_with_several_new_words_are_answered(server, oracle):  # noqa: F811
    """A client behind the speaker sends the words said since its last update at once
    (eval/capacity_alignatt.py does): every update is answered, the final as the reference
    translates the sentence."""
    rng = random.Random(23)
    sentences = [sentence_text(rng, low=8, high=12) for _ in range(2)]

    async def scenario():
        async with websockets.connect(server.alignatt_url) as ws:
            assert (await exchange(ws, INIT))["type"] == "init_ok"
            finals, seq = [], 0
            for utterance, sentence in enumerate(sentences):
                words = sentence.split()
                cuts = [3, 4, 7, len(words)]
                for cut in cuts:
                    seq += 1
                    message = {**update(seq, words[:cut], final=cut == len(words))}
                    message["utterance_id"] = utterance
                    answer = await exchange(ws, message)
                    assert answer["type"] == "translation" and answer["seq"] == seq, answer
                finals.append(answer["committed_text"])
            return finals

    finals = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert finals == [oracle(s).text.strip() for s in sentences]


def test_a_binary_frame_that_is_not_utf8_is_refused_and_the_connection_goes_on(
    server,
    oracle,  # noqa: F811
):
    async def scenario():
        async with websockets.connect(server.alignatt_url) as ws:
            assert (await exchange(ws, INIT))["type"] == "init_ok"
            await ws.send(b"\xff\xfe{")
            refused = json.loads(await asyncio.wait_for(ws.recv(), 60))
            utf8 = json.dumps(update(1, ["a", "man", "walks."], final=True)).encode()
            await ws.send(utf8)  # a binary frame of UTF-8 text is a message
            done = json.loads(await asyncio.wait_for(ws.recv(), 60))
            return refused, done

    refused, done = asyncio.run(scenario())
    assert refused["type"] == "error" and refused["code"] == "bad_protocol"
    assert "UTF-8" in refused["message"]
    assert done["final"] and done["committed_text"] == oracle("a man walks.").text.strip()


CUT = 5  # max_sentence_words of the rollover server


@pytest.fixture(scope="module")
def short_server(tmp_path_factory, model_cache):
    """The same server with sentences cut at ``CUT`` words (the protocol's rollover)."""
    base = models.tiny_model("llama", model_cache)
    log = tmp_path_factory.mktemp("alignatt-cut") / "serve.log"
    srv = TalkServer(
        base, log, None, "--no-enable-prefix-caching", options={"max_sentence_words": CUT}
    )
    srv.alignatt_url = srv.ws_url.replace("/realtime", "/alignatt")
    yield srv
    srv.stop()


def test_rollovers_answer_the_words_before_the_cut_and_a_final_holds_every_sentence(
    short_server,
    oracle,  # noqa: F811
):
    """A partial update past ``max_sentence_words`` is answered ``final`` (stop_reason
    rollover) with the sentence up to the cut, covering those words; the words past the
    cut open the next utterance's sentence. A final update that long is answered once,
    with every sentence it ended, and covers all its words."""
    rng = random.Random(29)
    first = sentence_text(rng, low=8, high=8).split()  # rolls over at CUT, carries 3
    second = sentence_text(rng, low=2, high=2).split()
    long_final = sentence_text(rng, low=12, high=12).split()  # CUT + CUT + 2 words

    def message(seq: int, utterance: int, words: list[str], final: bool = False) -> dict:
        return {**update(seq, words, final=final), "utterance_id": utterance}

    async def scenario():
        async with websockets.connect(short_server.alignatt_url) as ws:
            assert (await exchange(ws, INIT))["type"] == "init_ok"
            rolled = await exchange(ws, message(1, 0, first))
            # the client drops its utterance and starts the next with new words only
            next_final = await exchange(ws, message(2, 1, second, final=True))
            one_final = await exchange(ws, message(3, 2, long_final, final=True))
            return rolled, next_final, one_final

    rolled, next_final, one_final = asyncio.run(scenario())

    def reference(words: list[str]) -> str:
        return oracle(" ".join(words)).text.strip()

    assert rolled["final"] and rolled["stop_reason"] == "rollover"
    assert rolled["committed_text"] == reference(first[:CUT])
    assert rolled["covered_source_units"] == CUT
    carried = first[CUT:] + second  # 3 + 2 words: one sentence
    assert next_final["final"] and next_final["stop_reason"] == "final"
    assert next_final["committed_text"] == reference(carried)
    assert next_final["covered_source_units"] == len(second)
    parts = [long_final[:CUT], long_final[CUT : 2 * CUT], long_final[2 * CUT :]]
    assert one_final["final"] and one_final["stop_reason"] == "final"
    assert one_final["committed_text"] == " ".join(reference(p) for p in parts)
    assert one_final["covered_source_units"] == len(long_final)
    assert short_server.all_free()["open_sessions"] == 0
