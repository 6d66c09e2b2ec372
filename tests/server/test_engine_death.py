"""The engine core dies under ``vllm serve``: live clients hear it, the server exits
non-zero, and the supervisor recipe of docs/deploy.md starts it again; a stop that
was asked for still exits 0.

The supervisor is the recipe's shell loop (``until vllm serve ...; do ...; done``,
the same rule as systemd's ``Restart=on-failure``: restart on a non-zero exit only).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import httpx
import psutil
import pytest
import websockets

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from .test_server import SERVER_ENV, free_port, serve_command, wait_healthy

pytestmark = pytest.mark.server

# docs/deploy.md, "When the engine core dies": restart while vllm serve exits non-zero
SUPERVISOR = 'until "$@"; do echo "exit $?" >> "$EXITS"; sleep 1; done'


def engine_cores(supervisor_pid: int) -> list[psutil.Process]:
    """The engine core processes under the supervisor (vLLM names them EngineCore)."""
    found = []
    for process in psutil.Process(supervisor_pid).children(recursive=True):
        try:
            text = process.name() + " " + " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in text:
            found.append(process)
    return found


async def until_closed(ws) -> tuple[list[dict], websockets.exceptions.ConnectionClosed]:
    events = []
    try:
        while True:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    except websockets.exceptions.ConnectionClosed as closed:
        return events, closed


def test_engine_death_tells_every_client_exits_non_zero_and_the_supervisor_restarts(
    tmp_path, model_cache
):
    base = models.tiny_model("llama", model_cache)
    port = free_port()
    url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/simul/realtime"
    options = {"exposst": {"policy": "wait-2", "slot_len": 4}}
    command = serve_command(base, options, port, "--host", "127.0.0.1", "--seed", "0")
    log, exits = tmp_path / "serve.log", tmp_path / "exits"
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            ["bash", "-c", SUPERVISOR, "bash", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**SERVER_ENV, "EXITS": str(exits)},
            start_new_session=True,
        )
    try:
        wait_healthy(supervisor, url, log)

        async def scenario():
            busy = await websockets.connect(ws_url)  # a sentence in progress
            await busy.recv()
            await busy.send(json.dumps({"type": "input_text.append", "text": "a man walks "}))
            idle = await websockets.connect(ws_url)  # connected, nothing in progress
            await idle.recv()
            await asyncio.sleep(1.0)
            for core in engine_cores(supervisor.pid):
                core.send_signal(signal.SIGKILL)
            return await asyncio.gather(until_closed(busy), until_closed(idle))

        cores = engine_cores(supervisor.pid)
        assert cores, "no engine core process found"
        outcomes = asyncio.run(scenario())
        for events, closed in outcomes:
            codes = [e["error"]["code"] for e in events if e["type"] == "error"]
            assert "engine_dead" in codes, events
            assert closed.rcvd is not None and closed.rcvd.code == 1011, closed
        deadline = time.monotonic() + 120
        while not (exits.exists() and exits.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert exits.read_text().split() == ["exit", "1"], log.read_text()[-3000:]
        # the restarted server serves again
        wait_healthy(supervisor, url, log)
        source = "two dogs play in the park"
        body = {"messages": [{"role": "user", "content": source}]}
        reply = httpx.post(f"{url}/v1/simul/chat/completions", json=body, timeout=120)
        model, tokenizer = models.load(base)
        ref = ReferenceDecoder(model, build_prompt(tokenizer), slot_len=4).translate(
            source, "wait-2"
        )
        assert reply.json()["choices"][0]["message"]["content"] == ref.text
        # a stop that was asked for (SIGTERM to vllm serve) exits 0: the loop ends
        (server,) = psutil.Process(supervisor.pid).children()
        server.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert exits.read_text().split() == ["exit", "1"]  # no restart after it
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGTERM)
            try:
                supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(supervisor.pid, signal.SIGKILL)
