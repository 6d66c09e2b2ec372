"""Two ``vllm serve`` processes behind nginx (``deploy/nginx.conf``) on loopback.

Sessions through the balancer land on both servers and stay there; translations
equal the transformers reference decoder; chat completions are balanced per request;
when one server is killed mid-sentence its clients see a closed socket (never a
wrong or short ``done``), resume on the other server by reconnecting and resending
the sentence, and the other server's sessions finish unharmed.

Heavy on 2 cores (two engines and nginx): run with ``make test-scale-out`` (installs
nginx from Debian's packages and sets ``EXPOSST_SCALE_OUT=1``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import websockets.exceptions

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from .test_server import SERVER_ENV, free_port, serve_command, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [
    pytest.mark.server,
    pytest.mark.scale_out,
    pytest.mark.skipif(
        not os.environ.get("EXPOSST_SCALE_OUT"), reason="run with `make test-scale-out`"
    ),
]
CAP = 20
TIMEOUT = 120  # seconds for any one event: every wait in this test is bounded
SOURCES = [
    "a man is walking in the park with two dogs",
    "two people walk near the old house with a big black dog",
    "the red car is near the house",
    "a woman reads a book in the park",
]


class Backend:
    """One ``vllm serve`` in its own process group (so a kill takes its engine too)."""

    def __init__(self, base: Path, log: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        options = {"exposst": {"policy": "wait-2", "slot_len": 4, "max_sessions": 16}}
        command = serve_command(base, options, self.port, "--host", "127.0.0.1", "--seed", "0")
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=SERVER_ENV,
            start_new_session=True,
        )

    def stats(self) -> dict:
        return httpx.get(f"http://{self.addr}/v1/simul/stats", timeout=10).json()

    def kill(self) -> None:
        """SIGKILL the server and its engine: a machine or process dying."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()


def nginx_conf(listen: int, backends: list[Backend]) -> str:
    """``deploy/nginx.conf`` with this test's ports in place of 8000, 8001, 8002."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = [
        line for line in text.splitlines() if re.match(r"\s+server 127\.0\.0\.1:800\d", line)
    ]
    assert len(servers) == 2, "deploy/nginx.conf should list two servers"
    for line, backend in zip(servers, backends):
        text = text.replace(line, re.sub(r"127\.0\.0\.1:\d+", backend.addr, line))
    return text.replace("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{listen};")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    base = models.tiny_model("llama", model_cache)
    folder = tmp_path_factory.mktemp("scale-out")
    backends = [Backend(base, folder / f"serve{i}.log") for i in (1, 2)]
    nginx = None
    try:
        for backend in backends:  # both start at once; wait for each
            wait_healthy(backend.process, f"http://{backend.addr}", backend.log_path)
        port = free_port()
        prefix = folder / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_conf(port, backends))
        nginx = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(prefix / "stderr.log").open("w"),
        )
        wait_healthy(nginx, f"http://127.0.0.1:{port}", prefix / "stderr.log", timeout=30)
        yield {"base": base, "backends": backends, "url": f"127.0.0.1:{port}"}
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
        for backend in backends:
            backend.stop()


@pytest.fixture(scope="module")
def reference(model_cache):
    """The transformers reference decoder with the servers' settings (wait-2, slot 4)."""
    model, tokenizer = models.load(models.tiny_model("llama", model_cache))
    template = build_prompt(tokenizer)

    def translate(source: str, cap: int | None = None):
        decoder = ReferenceDecoder(model, template, slot_len=4, max_target_tokens=cap)
        return decoder.translate(source, "wait-2")

    return translate


def served_by(headers: Any) -> str:
    """The server that answered: the last of nginx's ``$upstream_addr`` (``a, b`` when
    nginx tried ``a``, found it dead and passed the request on to ``b``); "" without nginx."""
    return headers.get("X-Exposst-Upstream", "").rsplit(", ", 1)[-1]


class Live:
    """One WebSocket session through the balancer, driven word by word."""

    def __init__(self, url: str) -> None:
        self.url = f"ws://{url}/v1/simul/realtime"
        self.deltas: list[str] = []

    async def __aenter__(self) -> Live:
        self.ws = await websockets.connect(self.url, open_timeout=TIMEOUT)
        self.upstream = served_by(self.ws.response.headers)
        created = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert created["type"] == "session.created", created
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, kind: str, **fields: object) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def until(self, kind: str) -> dict:
        """Events until one of ``kind``, collecting deltas; an ``error`` fails."""
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if event["type"] == "response.output_text.delta":
                self.deltas.append(event["delta"])
            if event["type"] == "error":
                raise RuntimeError(event)
            if event["type"] == kind:
                return event

    async def words(self, words: list[str]) -> None:
        """Append words one at a time, each until the session waits for more."""
        for word in words:
            await self.send("input_text.append", text=word + " ")
            await self.until("input_text.waiting")

    async def finish(self) -> dict:
        await self.send("input_text.commit")
        return await self.until("response.output_text.done")

    async def sentence(self, source: str) -> dict:
        await self.send("input_text.append", text=source)
        return await self.finish()


def test_sessions_and_requests_spread_and_equal_the_reference(cluster, reference):
    url = cluster["url"]
    addrs = {backend.addr for backend in cluster["backends"]}

    async def session(source: str, gate: asyncio.Barrier) -> tuple[str, dict]:
        async with Live(url) as live:
            await gate.wait()  # all four connected at once: least_conn spreads them
            return live.upstream, await live.sentence(source)

    async def run() -> list[tuple[str, dict]]:
        gate = asyncio.Barrier(len(SOURCES))
        return await asyncio.gather(*(session(source, gate) for source in SOURCES))

    results = asyncio.run(asyncio.wait_for(run(), 4 * TIMEOUT))
    assert {upstream for upstream, _ in results} == addrs  # sessions on both servers
    for source, (_, done) in zip(SOURCES, results):
        ref = reference(source)
        assert (done["text"], done["delays"]) == (ref.text, ref.delays), source

    seen = set()
    for source in SOURCES:  # chat completions: balanced per request
        reply = httpx.post(
            f"http://{url}/v1/simul/chat/completions",
            json={
                "messages": [{"role": "user", "content": source}],
                "max_tokens": CAP,
                "simul": {"policy": "wait-2", "slot_len": 4},
            },
            timeout=TIMEOUT,
        )
        assert reply.status_code == 200, reply.text
        seen.add(served_by(reply.headers))
        assert reply.json()["choices"][0]["message"]["content"] == reference(source, CAP).text
    assert seen == addrs


def test_a_server_dies_mid_sentence_others_unharmed_clients_resume(cluster, reference):
    url = cluster["url"]
    backends = {backend.addr: backend for backend in cluster["backends"]}
    first, second = SOURCES[0].split(), SOURCES[1].split()

    async def run() -> dict:
        sessions = [await Live(url).__aenter__() for _ in range(4)]
        try:
            by_server: dict[str, list[Live]] = {}
            for live in sessions:
                by_server.setdefault(live.upstream, []).append(live)
            assert sorted(map(len, by_server.values())) == [2, 2], by_server.keys()
            doomed, survivor = sorted(by_server)
            for live in sessions:  # every session mid-sentence, some text written
                await live.words((first if live.upstream == doomed else second)[:4])
                assert live.deltas
            backends[doomed].kill()
            closed = []
            for live in by_server[doomed]:  # a closed socket, never a done or a delta
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await live.words(first[4:])
                    await live.finish()
                closed.append("".join(live.deltas).strip())
            unharmed = []
            for live in by_server[survivor]:  # the survivor's sessions carry on
                await live.words(second[4:])
                unharmed.append(await live.finish())
            resumed = []
            for _ in by_server[doomed]:  # reconnect, resend the sentence
                async with Live(url) as live:
                    resumed.append((live.upstream, await live.sentence(SOURCES[0])))
            return {
                "survivor": survivor,
                "closed": closed,
                "unharmed": unharmed,
                "resumed": resumed,
            }
        finally:
            for live in sessions:
                await live.ws.close()

    out = asyncio.run(asyncio.wait_for(run(), 6 * TIMEOUT))
    ref_first, ref_second = reference(SOURCES[0]), reference(SOURCES[1])
    for partial in out["closed"]:  # what was written before the crash is right
        assert partial and ref_first.text.startswith(partial)
    for done in out["unharmed"]:
        assert (done["text"], done["delays"]) == (ref_second.text, ref_second.delays)
    for upstream, done in out["resumed"]:
        assert upstream == out["survivor"]
        assert (done["text"], done["delays"]) == (ref_first.text, ref_first.delays)
    # the balancer routes new chat requests around the dead server
    for _ in range(3):
        reply = httpx.post(
            f"http://{url}/v1/simul/chat/completions",
            json={"messages": [{"role": "user", "content": SOURCES[2]}], "max_tokens": CAP},
            timeout=TIMEOUT,
        )
        assert reply.status_code == 200 and served_by(reply.headers) == out["survivor"]
    survivor_stats = backends[out["survivor"]].stats()
    assert survivor_stats["open_sessions"] == 0  # every session on it was freed
