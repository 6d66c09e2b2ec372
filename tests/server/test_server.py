"""``vllm serve`` with the plugin: a real server process on 127.0.0.1, tiny Llama.

Translations are checked against the transformers reference decoder (the oracle the
in-process session API is itself tested against in test_engine.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
import websockets.exceptions

from vllm_exposst import models
from vllm_exposst.models import ENGLISH_WORDS
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from ..conftest import make_random_adapter, peft_model, random_sentence

pytestmark = pytest.mark.server
API_KEY = "test-key"
MAX_SESSIONS = 40
MAX_SPEAKERS = MAX_SESSIONS + 5  # above the slots: a connection past them meets too_many_sessions
CAP = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVER_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def serve_command(base: Path, options: dict, port: int, *extra: str) -> list[str]:
    """``vllm serve`` on a tiny checkpoint with the plugin on, float32, eager."""
    return [
        str(Path(sys.executable).parent / "vllm"), "serve", str(base),
        "--scheduler-cls", "vllm_exposst.scheduler.ExposstScheduler",
        "--additional-config", json.dumps(options), "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", *extra,
    ]  # fmt: skip


def wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    """Until ``url/health`` answers 200; a clear error if the server exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"vllm serve did not start:\n{log.read_text()[-3000:]}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


class Server:
    def __init__(self, base: Path, adapters: dict[str, Path], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/simul/realtime"
        self.base, self.adapters = base, adapters
        options = {
            "exposst": {
                "policy": "wait-2",
                "slot_len": 4,
                "max_sessions": MAX_SESSIONS,
                "max_speakers": MAX_SPEAKERS,
            }
        }
        command = serve_command(
            base,
            options,
            self.port,
            "--host", "127.0.0.1", "--api-key", API_KEY,
            "--max-num-seqs", "48", "--seed", "0",
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
            "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()],
        )  # fmt: skip
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=SERVER_ENV
        )
        wait_healthy(self.process, self.url, log)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/simul/stats", headers=self.headers()).json()

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    folder = tmp_path_factory.mktemp("server")
    adapters = {
        name: make_random_adapter(base, folder / name, seed=i)
        for i, name in enumerate(["ende-a", "ende-b"], 1)
    }
    srv = Server(base, adapters, folder / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oracle(server):
    """Reference decoders: base model and each adapter, with the server's defaults."""
    model, tokenizer = models.load(server.base)
    template = build_prompt(tokenizer)
    by_model = {None: model}
    by_model.update({name: peft_model(server.base, path) for name, path in server.adapters.items()})

    def translate(source: str, policy="wait-2", slot_len=4, mode="exposst", lora=None, cap=CAP):
        offline = mode == "offline"
        decoder = ReferenceDecoder(
            by_model[lora],
            template,
            slot_len=slot_len,
            mode="recompute" if offline else mode,
            max_target_tokens=cap,
        )
        return decoder.translate(source, "offline" if offline else policy)

    return translate


async def live(server: Server, pieces: list[str], session: dict | None = None) -> dict:
    """One WebSocket sentence: pieces of text, commit, collect deltas and the summary."""
    async with websockets.connect(server.ws_url, additional_headers=server.headers()) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        if session:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            updated = json.loads(await ws.recv())
            assert updated["type"] == "session.updated", updated
        for piece in pieces:
            await ws.send(json.dumps({"type": "input_text.append", "text": piece}))
        await ws.send(json.dumps({"type": "input_text.commit"}))
        deltas = []
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "response.output_text.delta":
                deltas.append(event)
            elif event["type"] == "response.output_text.done":
                await ws.send(json.dumps({"type": "session.close"}))
                return {"deltas": deltas, "done": event}
            elif event["type"] != "input_text.waiting":  # sent between appends
                raise AssertionError(event)


def irregular_pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(5, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_websocket_live_session_equals_the_reference(server, oracle):
    rng = random.Random(1)
    source = "two people walk near the old house with a big black dog"
    out = asyncio.run(
        live(server, irregular_pieces(source, rng), {"policy": "wait-1", "slot_len": 3})
    )
    ref = oracle(source, policy="wait-1", slot_len=3, cap=None)
    done = out["done"]
    assert done["text"] == ref.text
    assert done["delays"] == ref.delays
    assert "".join(d["delta"] for d in out["deltas"]).strip() == ref.text
    assert [d["source_words_read"] for d in out["deltas"]] == sorted(
        d["source_words_read"] for d in out["deltas"]
    )
    assert len(done["elapsed_ms"]) == len(done["delays"])


def test_websocket_waiting_event_follows_what_the_source_unlocked(server, oracle):
    """``input_text.waiting``: once per wait, after the deltas written before it."""
    source = "a man is walking in the park with two dogs"
    appends = ["a ", "man is wal", "king in ", "the ", "pa", "rk with two ", "dogs"]

    async def scenario():
        async with websockets.connect(server.ws_url, additional_headers=server.headers()) as ws:
            await ws.recv()

            async def until(kind: str) -> dict:
                while (event := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != kind:
                    events.append(event)
                return event

            events = []
            for text in appends:  # after each one, everything until the session waits
                await ws.send(json.dumps({"type": "input_text.append", "text": text}))
                if text not in ("pa", "dogs"):  # those complete no word: no new wait
                    events.append(await until("input_text.waiting"))
            await ws.send(json.dumps({"type": "input_text.commit"}))
            return events, await until("response.output_text.done")

    events, done = asyncio.run(scenario())
    ref = oracle(source, policy="wait-2", cap=None)
    assert done["text"] == ref.text and done["delays"] == ref.delays
    waits = [e["source_words_read"] for e in events if e["type"] == "input_text.waiting"]
    assert waits == [1, 3, 5, 6, 9]  # "dogs" waits for the commit
    # a delta between two waiting events was unlocked by the words between them
    previous = 0
    for event in events:
        assert event["type"] in ("response.output_text.delta", "input_text.waiting"), event
        if event["type"] == "input_text.waiting":
            previous = event["source_words_read"]
        else:
            assert event["source_words_read"] > previous
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas).strip() == ref.text


def test_openai_client_streaming_and_not_all_four_modes(server, oracle):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1/simul", api_key=API_KEY)
    source = "a man walks in the red park with two dogs"
    for mode in ("exposst", "shift", "recompute", "offline"):
        simul = {"policy": "wait-3", "slot_len": 5, "mode": mode}
        ref = oracle(source, policy="wait-3", slot_len=5, mode=mode)
        reply = client.chat.completions.create(
            model=str(server.base),
            messages=[{"role": "user", "content": source}],
            max_tokens=CAP,
            extra_body={"simul": simul},
        )
        assert reply.choices[0].message.content == ref.text, mode
        summary = reply.model_extra["simul"]
        assert summary["delays"] == ref.delays
        assert summary["tokens_computed"] >= len(ref.target_ids)
        assert len(summary["elapsed_ms"]) == len(ref.delays)
        stream = client.chat.completions.create(
            model=str(server.base),
            messages=[{"role": "user", "content": source}],
            max_tokens=CAP,
            extra_body={"simul": simul},
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.strip() == ref.text, mode
        reads = [c.model_extra["simul"]["source_words_read"] for c in chunks[:-1]]
        assert reads == sorted(reads) and chunks[-1].model_extra["simul"]["delays"] == ref.delays


def splits_a_character(template, ids: list[int]) -> bool:
    """Does a prefix of these target tokens end inside a UTF-8 character?"""
    return any(template.decode(ids[:end]).endswith("\ufffd") for end in range(1, len(ids)))


def test_deltas_and_the_chat_stream_never_split_a_character(server, oracle):
    """Sentences on which the tiny model writes ü, emoji or CJK bytes in several tokens:
    the deltas join to the done text (the reference's), no delta shows half a character."""
    template = build_prompt(models.load(server.base)[1])
    rng = random.Random(5)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < 3:
        source = random_sentence(rng, ENGLISH_WORDS, 3, 12)
        ref = oracle(source, policy="token-wait-2", cap=None)
        if splits_a_character(template, ref.target_ids):
            chosen.append((source, ref.text))
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1/simul", api_key=API_KEY)
    for source, text in chosen:
        out = asyncio.run(live(server, [source], {"policy": "token-wait-2"}))
        deltas = [d["delta"] for d in out["deltas"]]
        assert out["done"]["text"] == text
        assert "".join(deltas) == text
        assert all(deltas) and not any(d.endswith("\ufffd") for d in deltas[:-1])
        stream = client.chat.completions.create(
            model=str(server.base),
            messages=[{"role": "user", "content": source}],
            extra_body={"simul": {"policy": "token-wait-2", "slot_len": 4}},
            stream=True,
        )
        contents = [c.choices[0].delta.content or "" for c in stream]
        assert "".join(contents) == text
        assert not any(c.endswith("\ufffd") for c in contents[:-2])


def test_thirty_two_concurrent_clients_with_two_adapters(server, oracle):
    rng = random.Random(2)
    policies = ["wait-1", "wait-3", "read-2/write-1", "token-wait-2"]
    jobs = []
    for i in range(32):
        source = random_sentence(rng, ENGLISH_WORDS, 3, 12)
        lora = [None, "ende-a", "ende-b"][i % 3]
        jobs.append((source, policies[i % 4], rng.randint(2, 6), lora))

    async def run():
        return await asyncio.gather(
            *[
                live(
                    server,
                    irregular_pieces(s, random.Random(i)),
                    {"policy": p, "slot_len": L, **({"model": m} if m else {})},
                )
                for i, (s, p, L, m) in enumerate(jobs)
            ]
        )

    results = asyncio.run(run())
    for (source, policy, slot_len, lora), out in zip(jobs, results):
        ref = oracle(source, policy=policy, slot_len=slot_len, lora=lora, cap=None)
        assert out["done"]["text"] == ref.text, (source, policy, lora)
        assert out["done"]["delays"] == ref.delays


BAD_REQUESTS = [
    ("malformed JSON", b"{not json", 400, "invalid_json"),
    (
        "unknown model",
        {"model": "nope", "messages": [{"role": "user", "content": "a b"}]},
        404,
        "model_not_found",
    ),
    (
        "bad policy",
        {"messages": [{"role": "user", "content": "a b"}], "simul": {"policy": "wait-zero"}},
        400,
        "invalid_parameter",
    ),
    (
        "bad slot_len",
        {"messages": [{"role": "user", "content": "a b"}], "simul": {"slot_len": 0}},
        400,
        "invalid_parameter",
    ),
    (
        "unknown simul key",
        {"messages": [{"role": "user", "content": "a"}], "simul": {"speed": 3}},
        400,
        "invalid_parameter",
    ),
    ("no messages", {"messages": []}, 400, "invalid_parameter"),
    (
        "source too long",
        {"messages": [{"role": "user", "content": "dog " * 1100}]},
        400,
        "context_length_exceeded",
    ),
]


@pytest.mark.parametrize("name, body, status, code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_http_requests_get_their_documented_errors(server, name, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(
        f"{server.url}/v1/simul/chat/completions",
        content=content,
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]


def test_api_key_is_enforced_on_the_new_routes(server):
    body = {"messages": [{"role": "user", "content": "a dog"}]}
    assert httpx.post(f"{server.url}/v1/simul/chat/completions", json=body).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert (
        httpx.post(f"{server.url}/v1/simul/chat/completions", json=body, headers=wrong).status_code
        == 401
    )

    async def connect(headers):
        async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
            await ws.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(connect(wrong))


def test_bad_events_too_many_sessions_and_disconnects_leave_the_server_clean(server, oracle):
    async def scenario():
        errors = []
        async with websockets.connect(server.ws_url, additional_headers=server.headers()) as ws:
            await ws.recv()
            for bad in [
                "not json",
                json.dumps([1, 2]),
                json.dumps({"type": "nope"}),
                json.dumps({"type": "session.update", "session": {"policy": "wait-q"}}),
                json.dumps({"type": "session.update", "session": {"model": "nope"}}),
                json.dumps({"type": "input_text.append"}),
                json.dumps({"type": "input_text.commit"}),
            ]:
                await ws.send(bad)
                errors.append(json.loads(await ws.recv()))
        # clients that vanish mid-sentence
        for _ in range(5):
            ws = await websockets.connect(server.ws_url, additional_headers=server.headers())
            await ws.recv()
            await ws.send(json.dumps({"type": "input_text.append", "text": "a man walks in "}))
            await asyncio.sleep(0.05)
            ws.transport.abort()  # vanish without a closing handshake
        # fill every session slot with clients waiting for source (wait-9 reads first)
        holders = []
        for _ in range(MAX_SESSIONS):
            ws = await websockets.connect(server.ws_url, additional_headers=server.headers())
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"policy": "wait-9"}}))
            await ws.recv()
            await ws.send(json.dumps({"type": "input_text.append", "text": "a "}))
            holders.append(ws)
        await asyncio.sleep(0.5)
        async with websockets.connect(server.ws_url, additional_headers=server.headers()) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_text.append", "text": "a dog "}))
            busy = json.loads(await ws.recv())
        reply = httpx.post(
            f"{server.url}/v1/simul/chat/completions",
            headers=server.headers(),
            json={"messages": [{"role": "user", "content": "a dog"}]},
        )
        for ws in holders:
            await ws.close()
        return errors, busy, reply

    errors, busy, reply = asyncio.run(scenario())
    codes = [e["error"]["code"] for e in errors]
    assert all(e["type"] == "error" for e in errors)
    assert codes == [
        "invalid_json",
        "invalid_event",
        "invalid_event",
        "invalid_parameter",
        "model_not_found",
        "invalid_parameter",
        "empty_source",
    ]
    assert busy["type"] == "error" and busy["error"]["code"] == "too_many_sessions"
    assert busy["error"]["retry_after"] >= 1
    assert reply.status_code == 429 and "Retry-After" in reply.headers

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["open_sessions"] == 0 and stats["free_blocks"] == stats["total_blocks"]:
            break
        time.sleep(0.5)
    assert stats["open_sessions"] == 0 and stats["free_blocks"] == stats["total_blocks"], stats
    # and it still serves correctly
    source = "the boy plays with a ball"
    out = asyncio.run(live(server, [source]))
    assert out["done"]["text"] == oracle(source, cap=None).text


def test_speakers_past_max_speakers_get_an_error_event_and_close_1013_until_one_leaves(
    server,
    oracle,
):
    """The speakers already in are served as before; a refused one may come back."""
    source = "a man walks in the park"

    async def connect():
        return await websockets.connect(server.ws_url, additional_headers=server.headers())

    async def scenario():
        speakers = [await connect() for _ in range(MAX_SPEAKERS)]
        created = [json.loads(await ws.recv())["type"] for ws in speakers]
        counted = server.stats()
        refused = await connect()
        event = json.loads(await refused.recv())
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await refused.recv()
        # a speaker already in still translates, at once
        ws = speakers[0]
        await ws.send(json.dumps({"type": "input_text.append", "text": source}))
        await ws.send(json.dumps({"type": "input_text.commit"}))
        while (done := json.loads(await ws.recv()))["type"] != "response.output_text.done":
            pass
        await speakers.pop().close()  # one leaves: a newcomer is admitted
        deadline = time.monotonic() + 10
        while server.stats()["speakers"] >= MAX_SPEAKERS and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        later = await connect()
        admitted = json.loads(await later.recv())["type"]
        for ws in [*speakers, later]:
            await ws.close()
        return created, counted, event, closed.value, done, admitted

    created, counted, event, closed, done, admitted = asyncio.run(scenario())
    assert created == ["session.created"] * MAX_SPEAKERS
    assert counted["speakers"] == counted["max_speakers"] == MAX_SPEAKERS
    assert event["type"] == "error" and event["error"]["code"] == "too_many_speakers"
    assert event["error"]["retry_after"] >= 1 and "max_speakers" in event["error"]["message"]
    assert closed.rcvd is not None and closed.rcvd.code == 1013
    assert done["text"] == oracle(source, cap=None).text
    assert admitted == "session.created"
    stats = server.stats()
    deadline = time.monotonic() + 30
    while stats["speakers"] and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = server.stats()
    assert stats["speakers"] == 0 and stats["open_sessions"] == 0, stats


def test_the_speaker_cap_is_an_option_validated_at_start_up():
    from vllm_exposst.options import ExposstOptions

    assert ExposstOptions.from_additional_config({"exposst": {"max_speakers": 7}}).max_speakers == 7
    assert ExposstOptions.from_additional_config({}).max_speakers is None  # max_sessions
    for bad in (0, -1, "many", True, 2.5):
        with pytest.raises(ValueError, match="exposst.max_speakers"):
            ExposstOptions.from_additional_config({"exposst": {"max_speakers": bad}})


def test_metrics_count_sessions_and_words(server):
    asyncio.run(live(server, ["two dogs play in the park"]))  # at least one sentence
    text = httpx.get(f"{server.url}/metrics").text
    assert "vllm_exposst_active_sessions" in text
    words = [
        line for line in text.splitlines() if line.startswith("vllm_exposst_words_written_total")
    ]
    assert words and float(words[0].split()[-1]) > 0
    assert "vllm_exposst_read_to_write_seconds_count" in text


def test_bad_plugin_options_stop_the_server_with_a_clear_message(model_cache, tmp_path):
    base = models.tiny_model("llama", model_cache)
    command = serve_command(base, {"exposst": {"slot_len": 0}}, free_port())
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=SERVER_ENV)
    assert done.returncode != 0
    assert "exposst.slot_len: must be an integer >= 1" in done.stdout + done.stderr
