"""Listeners, listen tokens and subtitles on a real ``vllm serve`` (tiny Llama, loopback).

What a listener receives is compared with what the speaker's own WebSocket said;
subtitles are read back with the real ``webvtt-py`` and ``srt`` parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import srt
import websockets
import websockets.exceptions
import webvtt

from vllm_exposst import models

from .test_server import API_KEY, SERVER_ENV, free_port, serve_command, stop_process, wait_healthy

pytestmark = pytest.mark.server
HISTORY, QUEUE, KEEP = 2, 30, 6  # the server's listen_history, listen_queue, subtitles_keep
SENTENCES = [
    "a man is walking in the park",
    "two dogs play with a red ball",
    "the old woman reads a book",
    "a boy rides his bike near the house",
    "the girl sings",
]


class ListenServer:
    def __init__(self, base: Path, log: Path, **options) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        exposst = {"policy": "wait-2", "slot_len": 4, **options}
        command = serve_command(
            base, {"exposst": exposst}, self.port, "--host", "127.0.0.1", "--api-key", API_KEY
        )
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=SERVER_ENV
        )
        wait_healthy(self.process, self.url, log)

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    folder = tmp_path_factory.mktemp("listen")
    srv = ListenServer(
        base,
        folder / "serve.log",
        listen_history=HISTORY,
        listen_queue=QUEUE,
        subtitles_keep=KEEP,
    )
    yield srv
    srv.stop()


class Speaker:
    """A speaker's WebSocket: committed sentences, every event it received kept."""

    def __init__(self, server: ListenServer) -> None:
        self.server = server
        self.events: list[dict] = []

    async def __aenter__(self) -> Speaker:
        self.ws = await websockets.connect(
            f"{self.server.ws}/v1/simul/realtime",
            additional_headers={"Authorization": f"Bearer {API_KEY}"},
        )
        created = json.loads(await self.ws.recv())
        assert created["type"] == "session.created"
        self.id, self.token = created["session"]["id"], created["session"]["listen_token"]
        return self

    async def say(self, sentence: str) -> dict:
        """Word by word, commit, until its ``done``."""
        for word in sentence.split():
            await self.ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
        await self.ws.send(json.dumps({"type": "input_text.commit"}))
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), 120))
            self.events.append(event)
            if event["type"] == "response.output_text.done":
                return event

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # closed already
            await self.ws.send(json.dumps({"type": "session.close"}))
        await self.ws.close()

    def listen_url(self, token: str | None = None, session: str | None = None) -> str:
        token = self.token if token is None else token
        return f"{self.server.ws}/simul/listen?session={session or self.id}&token={token}"


async def follow(url: str, events: list[dict], **connect) -> int:
    """Every event until the server closes; returns the close code."""
    async with websockets.connect(url, **connect) as ws:
        try:
            async for raw in ws:
                events.append(json.loads(raw))
        except websockets.exceptions.ConnectionClosed:
            pass
        return ws.close_code


def speaker_view(events: list[dict]) -> list[tuple]:
    """Deltas and done events as (type, text), in order: what both sides must agree on."""
    out = []
    for event in events:
        if event["type"] == "response.output_text.delta":
            out.append(("delta", event["delta"]))
        elif event["type"] == "response.output_text.done":
            out.append(("done", event["text"]))
    return out


def test_every_listener_gets_what_the_speaker_got_in_order_then_the_end(server):
    async def scenario():
        async with Speaker(server) as speaker:
            heard = [[] for _ in range(3)]
            tasks = [asyncio.ensure_future(follow(speaker.listen_url(), h)) for h in heard]
            while not all(heard):  # each has its listen.started: it is following
                await asyncio.sleep(0.05)
            dones = [await speaker.say(s) for s in SENTENCES[:3]]
        codes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return speaker, dones, heard, codes

    speaker, dones, heard, codes = asyncio.run(scenario())
    assert codes == [1000, 1000, 1000]
    assert [d["text"] for d in dones] and all(d["text"] for d in dones)
    for events in heard:
        assert events[0]["type"] == "listen.started" and events[0]["replayed"] == 0
        assert events[-1]["type"] == "session.ended" and events[-1]["sentences_finished"] == 3
        assert speaker_view(events) == speaker_view(speaker.events)
        done = [e for e in events if e["type"] == "response.output_text.done"]
        assert [d["sentence"] for d in done] == [0, 1, 2]
        assert [d["source"] for d in done] == SENTENCES[:3]
        assert all(0 <= d["cue"]["start"] < d["cue"]["end"] for d in done)
        starts = [d["cue"]["start"] for d in done]
        assert starts == sorted(starts) and [d["end"] for d in done] == ["commit"] * 3
        words = [w for e in events if e["type"] == "input_text.words" for w in e["words"]]
        assert words == " ".join(SENTENCES[:3]).split()
        for event in events:
            if event["type"] in ("response.output_text.delta", "input_text.waiting"):
                assert event["sentence"] in (0, 1, 2)


def test_a_late_listener_gets_the_last_sentences_then_the_live_ones(server):
    async def scenario():
        async with Speaker(server) as speaker:
            earlier = [await speaker.say(s) for s in SENTENCES[:4]]
            heard: list[dict] = []
            task = asyncio.ensure_future(follow(speaker.listen_url(), heard))
            while not heard:
                await asyncio.sleep(0.05)
            live = await speaker.say(SENTENCES[4])
        await asyncio.wait_for(task, 60)
        return earlier, live, heard

    earlier, live, heard = asyncio.run(scenario())
    assert heard[0]["type"] == "listen.started"
    assert heard[0]["sentences_finished"] == 4 and heard[0]["replayed"] == HISTORY
    replayed = [e for e in heard if e.get("replay")]
    assert [(e["sentence"], e["text"], e["source"]) for e in replayed] == [
        (i, earlier[i]["text"], SENTENCES[i]) for i in range(4 - HISTORY, 4)
    ]
    fresh = [e for e in heard[1:] if not e.get("replay")]
    done = [e for e in fresh if e["type"] == "response.output_text.done"]
    assert [(d["sentence"], d["text"]) for d in done] == [(4, live["text"])]
    deltas = "".join(e["delta"] for e in fresh if e["type"] == "response.output_text.delta")
    assert deltas.strip() == live["text"]


async def refusal(url: str) -> tuple[int, dict]:
    """The HTTP status and JSON error body of a refused listen handshake."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(url):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body)


def test_listen_tokens_refuse_missing_wrong_foreign_and_closed(server):
    async def scenario():
        async with Speaker(server) as a, Speaker(server) as b:
            assert a.token != b.token and len(a.token) >= 43
            checks = {
                "no token": (
                    f"{server.ws}/simul/listen?session={a.id}",
                    401,
                    "missing_listen_token",
                ),
                "wrong token": (a.listen_url(token="A" * 43), 403, "invalid_listen_token"),
                "other session's": (a.listen_url(token=b.token), 403, "invalid_listen_token"),
                "unknown session": (a.listen_url(session="sess_no"), 403, "invalid_listen_token"),
            }
            for name, (url, status, code) in checks.items():
                got, body = await refusal(url)
                assert (got, body["error"]["code"]) == (status, code), name
                assert body["error"]["message"] and body["error"]["type"], name
            # the right token works without the API key ...
            async with websockets.connect(a.listen_url()) as ws:
                started = json.loads(await ws.recv())
            assert started["type"] == "listen.started" and started["session"]["id"] == a.id
            assert "listen_token" not in started["session"]
            # ... and opens nothing under /v1 (what a leaked token exposes: this session)
            leaked = {"Authorization": f"Bearer {a.token}"}
            assert httpx.get(f"{server.url}/v1/simul/stats", headers=leaked).status_code == 401
            with pytest.raises(websockets.exceptions.InvalidStatus):
                async with websockets.connect(
                    f"{server.ws}/v1/simul/realtime", additional_headers=leaked
                ) as ws:
                    await ws.recv()
        deadline = time.monotonic() + 10
        while (status := await refusal(a.listen_url()))[0] != 410:
            assert time.monotonic() < deadline, status  # the server sees the close a bit later
            await asyncio.sleep(0.1)
        return status

    status, body = asyncio.run(scenario())
    assert body["error"]["code"] == "session_ended"


def test_subtitles_while_the_talk_runs_and_for_a_while_after(server):
    async def scenario():
        async with Speaker(server) as speaker:
            dones = [await speaker.say(s) for s in SENTENCES[:2]]
            during = httpx.get(
                f"{server.url}/simul/subtitles/{speaker.id}.vtt", params={"token": speaker.token}
            )
        return speaker, dones, during

    speaker, dones, during = asyncio.run(scenario())
    assert during.status_code == 200 and during.headers["content-type"].startswith("text/vtt")
    cues = webvtt.from_string(during.text).captions
    assert [html.unescape(c.text) for c in cues] == [one_line(d["text"]) for d in dones]
    assert all(c.start < c.end for c in cues) and cues[0].start < cues[1].start

    def get(name: str, **params):
        params.setdefault("token", speaker.token)
        return httpx.get(f"{server.url}/simul/subtitles/{name}", params=params)

    after = get(f"{speaker.id}.srt", track="both")  # the session has ended by now
    assert after.status_code == 200
    parsed = list(srt.parse(after.text))
    assert [s.content for s in parsed] == [
        f"{one_line(d['text'])}\n{source}" for d, source in zip(dones, SENTENCES)
    ]
    # the same cue times in both formats (to the millisecond)
    for subtitle, cue in zip(parsed, cues):
        assert abs(subtitle.start.total_seconds() - _vtt_seconds(cue.start)) < 1e-6
        assert abs(subtitle.end.total_seconds() - _vtt_seconds(cue.end)) < 1e-6
    source = webvtt.from_string(get(f"{speaker.id}.vtt", track="source").text)
    assert [c.text for c in source.captions] == SENTENCES[:2]
    assert get(f"{speaker.id}.vtt", track="nope").status_code == 400
    assert get(f"{speaker.id}.ass").status_code == 404
    assert get(f"{speaker.id}.vtt", token="wrong").status_code == 403
    assert get(f"{speaker.id}.vtt", token="").status_code == 401
    time.sleep(KEEP + 0.5)
    expired = get(f"{speaker.id}.vtt")
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "invalid_listen_token"


def one_line(text: str) -> str:
    """A cue's text as documented: whitespace collapsed, '-->' written '->'."""
    return " ".join(text.split()).replace("-->", "->")


def _vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def stats(server: ListenServer) -> dict:
    return httpx.get(
        f"{server.url}/v1/simul/stats", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()


def test_a_stalled_listener_slows_nobody(server):
    """A listener that stops reading (reading paused, a small receive window): the
    speaker and a reading listener still get every event.  The kernel's socket buffers
    (up to net.ipv4.tcp_wmem's maximum, 4 MB here) take its events first, so it may
    not fall ``listen_queue`` events behind in this short talk; whatever it gets is the
    speaker's events in order, ending in the end of the session or in the drop
    (``listener_too_slow``: the drop itself is tested in test_listen_hub.py)."""

    async def scenario():
        async with Speaker(server) as speaker:
            stalled_sock = socket.socket()  # a small window from the handshake on
            stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            stalled_sock.connect(("127.0.0.1", server.port))
            stalled = await websockets.connect(speaker.listen_url(), sock=stalled_sock)
            stalled.transport.pause_reading()
            heard: list[dict] = []
            reader = asyncio.ensure_future(follow(speaker.listen_url(), heard))
            while not heard:
                await asyncio.sleep(0.05)
            assert stats(server)["listeners"] >= 2
            for sentence in SENTENCES * 8:
                await speaker.say(sentence)
        await asyncio.wait_for(reader, 60)
        stalled.transport.resume_reading()
        last = []
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:
                last.append(json.loads(await asyncio.wait_for(stalled.recv(), 30)))
        return speaker, heard, last, stalled.close_code

    speaker, heard, last, code = asyncio.run(scenario())
    assert speaker_view(heard) == speaker_view(speaker.events)
    assert sum(e["type"] == "response.output_text.done" for e in speaker.events) == 40
    got = speaker_view(last)
    assert got == speaker_view(speaker.events)[: len(got)]
    if last[-1]["type"] == "error":
        assert last[-1]["error"]["code"] == "listener_too_slow" and code == 1013
    else:
        assert last[-1]["type"] == "session.ended" and code == 1000
        assert got == speaker_view(speaker.events)


def test_an_auto_segmented_talk_reaches_listeners_and_subtitles(server):
    """No commits: the server cuts the sentences; they may overlap, and the listener
    still gets every one under its index, with the speaker's source and text."""
    text = "A man walks in the park. Two dogs play with a ball! The old woman reads."

    async def scenario():
        async with Speaker(server) as speaker:
            update = {"type": "session.update", "session": {"segmentation": "auto"}}
            await speaker.ws.send(json.dumps(update))
            assert json.loads(await speaker.ws.recv())["type"] == "session.updated"
            heard: list[dict] = []
            task = asyncio.ensure_future(follow(speaker.listen_url(), heard))
            while not heard:
                await asyncio.sleep(0.05)
            for word in text.split():
                await speaker.ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
            await speaker.ws.send(json.dumps({"type": "session.close"}))
            async for raw in speaker.ws:  # every sentence's done, then the close
                speaker.events.append(json.loads(raw))
            subtitles = httpx.get(
                f"{server.url}/simul/subtitles/{speaker.id}.srt",
                params={"token": speaker.token, "track": "source"},
            )
        await asyncio.wait_for(task, 60)
        return speaker, heard, subtitles

    speaker, heard, subtitles = asyncio.run(scenario())
    said = {e["sentence"]: e for e in speaker.events if e["type"] == "response.output_text.done"}
    got = {e["sentence"]: e for e in heard if e["type"] == "response.output_text.done"}
    assert sorted(said) == sorted(got) == [0, 1, 2]
    assert [said[i]["source"] for i in range(3)] == [
        "A man walks in the park.",
        "Two dogs play with a ball!",
        "The old woman reads.",
    ]
    for i in range(3):
        assert (got[i]["text"], got[i]["source"]) == (said[i]["text"], said[i]["source"])
        deltas = [e["delta"] for e in heard if e.get("sentence") == i and "delta" in e]
        assert "".join(deltas).strip() == said[i]["text"]
        words = [w for e in heard if e["type"] == "input_text.words" and e["sentence"] == i
                 for w in e["words"]]  # fmt: skip
        assert " ".join(words) == said[i]["source"]
    assert [s.content for s in srt.parse(subtitles.text)] == [said[i]["source"] for i in range(3)]
