"""The listener hub, listen tokens and subtitles, without a server (fast).

Subtitles are read back with the real ``webvtt-py`` and ``srt`` parsers.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import srt
import webvtt

from vllm_exposst.options import ExposstOptions
from vllm_exposst.server import listen as listen_module
from vllm_exposst.server.errors import ApiError
from vllm_exposst.server.listen import listen
from vllm_exposst.server.listeners import ListenerHub, ListenerRegistry, ListenSettings
from vllm_exposst.server.subtitles import Cue, render, to_srt, to_webvtt


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def drain(listener) -> list[dict | None]:
    out = []
    while not listener.queue.empty():
        item = listener.queue.get_nowait()
        out.append(None if item is None else json.loads(item))
    return out


def speak(hub: ListenerHub, clock: Clock, source: str, translation: list[str], index: int):
    """What a speaker's connection feeds the hub for one sentence."""
    clock.t += 0.5
    for word in source.split():
        hub.source_word(index, word)
    for piece in translation:
        clock.t += 0.25
        delta = {"type": "response.output_text.delta", "delta": piece, "source_words_read": 2}
        hub.publish({**delta, "sentence": index})
    clock.t += 0.25
    text = "".join(translation).strip()
    done = {"type": "response.output_text.done", "sentence": index, "text": text}
    hub.publish({**done, "source": source, "end": "commit"})


def test_every_listener_gets_every_event_in_order_with_sentences_and_times():
    clock = Clock()
    hub = ListenerHub("sess_a", ListenSettings(), clock)
    hub.publish({"type": "session.created", "session": {"id": "sess_a", "listen_token": "x"}})
    first, second = hub.join(), hub.join()
    speak(hub, clock, "a man walks", ["ein", " Mann", " geht"], 0)
    speak(hub, clock, "the dog runs", ["der Hund", " rennt"], 1)
    one, two = drain(first), drain(second)
    assert one == two
    started = one[0]
    assert started["type"] == "listen.started" and started["replayed"] == 0
    assert started["session"] == {"id": "sess_a"}  # the token is not repeated to listeners
    kinds = [(e["type"], e.get("sentence")) for e in one[1:]]
    assert kinds == [
        *[("input_text.words", 0)] * 3,
        *[("response.output_text.delta", 0)] * 3,
        ("response.output_text.done", 0),
        *[("input_text.words", 1)] * 3,
        *[("response.output_text.delta", 1)] * 2,
        ("response.output_text.done", 1),
    ]
    words = [w for e in one if e["type"] == "input_text.words" for w in e["words"]]
    assert words == ["a", "man", "walks", "the", "dog", "runs"]
    done = [e for e in one if e["type"] == "response.output_text.done"]
    assert [d["source"] for d in done] == ["a man walks", "the dog runs"]
    assert [d["text"] for d in done] == ["ein Mann geht", "der Hund rennt"]
    # first source word at 0.5 s; done after three deltas and the commit
    assert done[0]["cue"] == {"start": 0.5, "end": 1.5} and done[0]["end"] == "commit"
    assert done[1]["cue"] == {"start": 2.0, "end": 2.75}


def test_events_without_sentence_or_source_are_numbered_and_given_the_words_seen():
    clock = Clock()
    hub = ListenerHub("sess_b", ListenSettings(), clock)
    listener = hub.join()
    for index in (0, 1):
        hub.source_word(index, "one")
        hub.source_word(index, "two")
        hub.publish({"type": "response.output_text.delta", "delta": "eins"})
        hub.publish({"type": "response.output_text.done", "text": "eins"})
    events = [e for e in drain(listener)[1:] if e["type"].startswith("response")]
    assert [e["sentence"] for e in events] == [0, 0, 1, 1]
    assert [c.source for c in hub.finished] == ["one two", "one two"]


def test_a_late_listener_gets_the_last_n_sentences_then_the_live_one():
    clock = Clock()
    hub = ListenerHub("sess_c", ListenSettings(history=2), clock)
    for i in range(5):
        speak(hub, clock, f"word{i} more", [f"wort{i}"], i)
    hub.source_word(5, "half")
    hub.source_word(5, "a")
    delta = {"type": "response.output_text.delta", "delta": "ein halber", "sentence": 5}
    hub.publish({**delta, "source_words_read": 2})
    late = hub.join()
    replay = drain(late)
    assert replay[0]["type"] == "listen.started"
    assert replay[0]["sentences_finished"] == 5 and replay[0]["replayed"] == 2
    assert [(e["type"], e["sentence"]) for e in replay[1:]] == [
        ("response.output_text.done", 3),
        ("response.output_text.done", 4),
        ("input_text.words", 5),
        ("response.output_text.delta", 5),
    ]
    assert all(e["replay"] for e in replay[1:])
    assert replay[3]["words"] == ["half", "a"] and replay[4]["delta"] == "ein halber"
    hub.publish({"type": "response.output_text.delta", "delta": " Satz", "sentence": 5})
    assert drain(late) == [
        {
            "type": "response.output_text.delta",
            "delta": " Satz",
            "sentence": 5,
        }
    ]
    nobody = ListenerHub("sess_d", ListenSettings(history=0), clock)
    speak(nobody, clock, "a b", ["c"], 0)
    assert [e["type"] for e in drain(nobody.join())] == ["listen.started"]


def test_a_listener_that_falls_behind_is_dropped_and_the_others_are_not():
    clock = Clock()
    hub = ListenerHub("sess_e", ListenSettings(queue=10), clock)
    stalled, reading = hub.join(), hub.join()
    received = drain(reading)
    for i in range(30):
        hub.publish({"type": "response.output_text.delta", "delta": f" w{i}"})
        received += drain(reading)
    assert stalled not in hub.listeners and reading in hub.listeners
    assert hub.dropped == 1 and stalled.reason == "too_slow" and stalled.released.is_set()
    left = drain(stalled)
    assert left[-1] is None and left[0]["type"] == "error"
    assert left[0]["error"]["code"] == "listener_too_slow"
    assert len(left) == 2  # its backlog is discarded: the error goes out at once
    assert [e["delta"] for e in received[1:]] == [f" w{i}" for i in range(30)]


def test_the_end_reaches_every_listener_after_its_backlog():
    clock = Clock()
    hub = ListenerHub("sess_f", ListenSettings(), clock)
    listener = hub.join()
    speak(hub, clock, "a b", ["c d"], 0)
    hub.end()
    events = drain(listener)
    assert events[-1] is None and events[-2]["type"] == "session.ended"
    assert events[-2]["sentences_finished"] == 1
    assert listener.reason == "ended" and not hub.listeners
    hub.end()  # twice is harmless
    late = hub.join()  # joined while the session ended (between the token check and now)
    assert [e and e["type"] for e in drain(late)] == [
        "listen.started",
        "response.output_text.done",
        "session.ended",
        None,
    ]
    assert late not in hub.listeners and late.reason == "ended"


def test_listen_tokens_are_per_session_and_refused_in_the_api_format():
    clock = Clock()
    registry = ListenerRegistry(ListenSettings(keep_after_end=60), clock)
    a, b = registry.open("sess_1"), registry.open("sess_2")
    assert a.token != b.token and len(a.token) >= 43
    assert registry.find("sess_1", a.token, listening=True) is a

    def refused(session, token, listening=True) -> ApiError:
        with pytest.raises(ApiError) as info:
            registry.find(session, token, listening)
        body = info.value.body()["error"]
        assert body["message"] and body["type"] and body["code"]
        return info.value

    assert (refused("sess_1", None).status, refused("sess_1", None).code) == (
        401,
        "missing_listen_token",
    )
    assert refused(None, a.token).status == 401
    wrong = refused("sess_1", "x" * 43)
    other = refused("sess_1", b.token)
    unknown = refused("sess_9", a.token)
    assert wrong.status == other.status == unknown.status == 403
    assert wrong.message == other.message == unknown.message  # nothing said about sessions
    assert refused("sess_1", "é").status == 403  # not ASCII: refused, no crash
    registry.close(a)
    assert refused("sess_1", a.token).status == 410  # closed: no more listening
    assert registry.find("sess_1", a.token, listening=False) is a  # subtitles stay
    clock.t += 61
    assert refused("sess_1", a.token, listening=False).status == 403  # expired
    assert "sess_1" not in registry.hubs and registry.find("sess_2", b.token, True) is b


def test_memory_is_bounded_sentences_open_sentences_and_ended_sessions():
    clock = Clock()
    registry = ListenerRegistry(ListenSettings(max_sentences=3, max_ended=2), clock)
    hub = registry.open("sess_x")
    for i in range(10):
        speak(hub, clock, f"w{i} v", [f"t{i}"], i)
    assert [c.sentence for c in hub.finished] == [7, 8, 9] and hub.finished_count == 10
    for i in range(200):  # deltas of sentences that never finish
        hub.publish({"type": "response.output_text.delta", "delta": "x", "sentence": 100 + i})
    assert len(hub.open) <= 64
    for i in range(5):
        registry.close(registry.open(f"sess_{i}"))
        clock.t += 1
    assert sorted(registry.hubs) == ["sess_3", "sess_4", "sess_x"]


def test_options_carry_the_listener_settings_and_refuse_bad_ones():
    options = ExposstOptions.from_additional_config(
        {"exposst": {"listen_history": 0, "listen_queue": 5, "subtitles_keep": 10}}
    )
    settings = ListenSettings.from_options(options)
    assert (settings.history, settings.queue, settings.keep_after_end) == (0, 5, 10)
    for bad in ({"listen_queue": 0}, {"listen_history": -1}, {"subtitles_keep": "x"}):
        with pytest.raises(ValueError, match=f"exposst.{next(iter(bad))}"):
            ExposstOptions.from_additional_config({"exposst": bad})


CUES = [
    Cue(0, 0.5, 2.25, "a man walks", "ein Mann geht"),
    Cue(1, 2.0, 3661.5, "tom & jerry <b>", "Tom & Jerry --> <i>"),
    Cue(2, 4.0, 4.0, "silence", ""),  # nothing written: no translation cue
]


def test_webvtt_parses_with_webvtt_py():
    for track, expected in [
        ("translation", ["ein Mann geht", "Tom & Jerry -> <i>"]),
        ("source", ["a man walks", "tom & jerry <b>", "silence"]),
        ("both", ["ein Mann geht\na man walks", "Tom & Jerry -> <i>\ntom & jerry <b>", "silence"]),
    ]:
        parsed = webvtt.from_string(to_webvtt(CUES, track))
        assert [c.raw_text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                for c in parsed] == expected  # fmt: skip
        assert parsed[0].start == "00:00:00.500" and parsed[0].end == "00:00:02.250"
        assert parsed[1].end == "01:01:01.500"
        assert [c.identifier for c in parsed] == [str(i) for i in range(len(expected))]
    silence = webvtt.from_string(to_webvtt(CUES, "source"))[2]
    assert silence.end > silence.start  # a cue never ends at its start (same-width strings)


def test_srt_parses_with_srt():
    for track, expected in [
        ("translation", ["ein Mann geht", "Tom & Jerry -> <i>"]),
        ("both", ["ein Mann geht\na man walks", "Tom & Jerry -> <i>\ntom & jerry <b>", "silence"]),
    ]:
        parsed = list(srt.parse(to_srt(CUES, track)))
        assert [s.content for s in parsed] == expected
        assert [s.index for s in parsed] == list(range(1, len(expected) + 1))
        assert parsed[0].start.total_seconds() == 0.5 and parsed[0].end.total_seconds() == 2.25
        assert parsed[1].end.total_seconds() == 3661.5
    reordered = list(srt.parse(to_srt([CUES[1], CUES[0]], "translation")))  # done out of order
    assert [s.content for s in reordered] == ["ein Mann geht", "Tom & Jerry -> <i>"]
    assert to_srt([], "translation") == "" and list(srt.parse("")) == []
    assert webvtt.from_string(to_webvtt([], "translation")).captions == []
    with pytest.raises(ValueError, match="track"):
        render(CUES, "vtt", "both-tracks")
    with pytest.raises(ValueError, match="format"):
        render(CUES, "ass", "source")


class FakeSocket:
    """The parts of a Starlette WebSocket that ``listen`` uses; ``send_text`` stalls
    forever after ``sendable`` messages, as a client that stopped reading would, once
    the socket buffers are full; ``close`` then stalls too when ``stalled_close``."""

    def __init__(self, params: dict, sendable: int = 10**9, stalled_close: bool = False):
        self.query_params = params
        self.sendable, self.stalled_close = sendable, stalled_close
        self.sent: list[dict] = []
        self.denied = self.closed = None
        self.accepted = False

    async def send_denial_response(self, response) -> None:
        self.denied = response

    async def accept(self) -> None:
        self.accepted = True

    async def send_text(self, text: str) -> None:
        if len(self.sent) >= self.sendable:
            await asyncio.Event().wait()
        self.sent.append(json.loads(text))

    async def receive(self) -> dict:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000) -> None:
        self.closed = code
        if self.stalled_close:
            await asyncio.Event().wait()


def test_the_listen_route_cuts_off_a_stalled_client_and_refuses_bad_tokens(monkeypatch):
    monkeypatch.setattr(listen_module, "RELEASE_GRACE", 0.2)
    monkeypatch.setattr(listen_module, "CLOSE_TIMEOUT", 0.2)

    async def scenario():
        registry = ListenerRegistry(ListenSettings(queue=5))
        hub = registry.open("sess_r")
        params = {"session": "sess_r", "token": hub.token}
        stalled = FakeSocket(params, sendable=2, stalled_close=True)
        reading = FakeSocket(params)
        tasks = [asyncio.ensure_future(listen(ws, registry)) for ws in (stalled, reading)]
        await asyncio.sleep(0.05)
        for i in range(20):
            hub.publish({"type": "response.output_text.delta", "delta": f" w{i}"})
            await asyncio.sleep(0)
        started = time.monotonic()
        await asyncio.wait_for(tasks[0], 5)  # the stalled one is let go, the other stays
        cut_off = time.monotonic() - started
        assert not tasks[1].done()
        hub.end()
        await asyncio.wait_for(tasks[1], 5)
        refused = FakeSocket({"session": "sess_r"})
        await listen(refused, registry)
        return registry, stalled, reading, refused, cut_off

    registry, stalled, reading, refused, cut_off = asyncio.run(scenario())
    assert cut_off < 1.0 and stalled.closed == 1013
    assert [e["type"] for e in stalled.sent] == ["listen.started", "response.output_text.delta"]
    assert registry.stats()["listeners_dropped"] == 1
    deltas = [e["delta"] for e in reading.sent if e["type"] == "response.output_text.delta"]
    assert deltas == [f" w{i}" for i in range(20)]
    assert reading.sent[-1]["type"] == "session.ended" and reading.closed == 1000
    assert not refused.accepted and refused.denied.status_code == 401
    assert json.loads(refused.denied.body)["error"]["code"] == "missing_listen_token"


def test_listeners_past_the_servers_cap_get_429_with_retry_after_until_one_leaves():
    async def scenario():
        registry = ListenerRegistry(ListenSettings(max_listeners=2))
        a, b = registry.open("sess_a"), registry.open("sess_b")
        following = [FakeSocket({"session": "sess_a", "token": a.token}) for _ in range(2)]
        tasks = [asyncio.ensure_future(listen(ws, registry)) for ws in following]
        await asyncio.sleep(0.05)
        refused = FakeSocket({"session": "sess_b", "token": b.token})  # the cap is server-wide
        await listen(refused, registry)
        counted = registry.stats()["listeners"]
        registry.close(a)  # the talk ends: its listeners leave
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        later = FakeSocket({"session": "sess_b", "token": b.token})
        task = asyncio.ensure_future(listen(later, registry))
        await asyncio.sleep(0.05)
        registry.close(b)
        await asyncio.wait_for(task, 5)
        return following, refused, counted, later

    following, refused, counted, later = asyncio.run(scenario())
    assert all(ws.accepted for ws in following) and counted == 2
    assert not refused.accepted and refused.denied.status_code == 429
    assert refused.denied.headers["retry-after"] == "1"
    assert json.loads(refused.denied.body)["error"]["code"] == "too_many_listeners"
    assert later.accepted and later.sent[0]["type"] == "listen.started"


def test_the_listener_cap_is_an_option_validated_at_start_up():
    options = ExposstOptions.from_additional_config({"exposst": {"max_listeners": 7}})
    assert ListenSettings.from_options(options).max_listeners == 7
    for bad in (0, -1, "many", True):
        with pytest.raises(ValueError, match="exposst.max_listeners"):
            ExposstOptions.from_additional_config({"exposst": {"max_listeners": bad}})
