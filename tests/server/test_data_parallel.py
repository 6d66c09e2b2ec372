"""vLLM's own data parallelism with ExPosST: ``vllm serve --data-parallel-size 2``.

One server, two engine cores (one per CPU core here), vLLM's balancer in front: every
engine runs ExPosST's scheduler, a session stays on its engine (vLLM pins a
streaming-input request to the engine that took it), translations equal the reference
decoder, and ``/v1/simul/stats`` sums both engines (``engines`` lists each).

Heavy on 2 cores: run with ``make test-scale-out`` (sets ``EXPOSST_SCALE_OUT=1``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import httpx
import pytest

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from .test_scale_out import SOURCES, TIMEOUT, Live
from .test_server import SERVER_ENV, free_port, serve_command, wait_healthy

pytestmark = [
    pytest.mark.server,
    pytest.mark.scale_out,
    pytest.mark.skipif(
        not os.environ.get("EXPOSST_SCALE_OUT"), reason="run with `make test-scale-out`"
    ),
]


@pytest.fixture(scope="module")
def reference(model_cache):
    model, tokenizer = models.load(models.tiny_model("llama", model_cache))
    template = build_prompt(tokenizer)
    return lambda source: ReferenceDecoder(model, template, slot_len=4).translate(source, "wait-2")


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory, model_cache):
    """One ``vllm serve --data-parallel-size 2 --api-server-count 1``, an engine per core."""
    base = models.tiny_model("llama", model_cache)
    port = free_port()
    log = tmp_path_factory.mktemp("data-parallel") / "serve.log"
    options = {"exposst": {"policy": "wait-2", "slot_len": 4, "max_sessions": 16}}
    command = serve_command(
        base, options, port, "--host", "127.0.0.1", "--seed", "0",
        "--data-parallel-size", "2", "--api-server-count", "1",
    )  # fmt: skip
    env = {**SERVER_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_healthy(process, f"http://127.0.0.1:{port}", log)
            yield {"base": base, "url": f"127.0.0.1:{port}"}
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def test_data_parallel_sessions_use_both_engines_and_stats_cover_them(data_parallel, reference):
    url = data_parallel["url"]

    def stats() -> dict:
        return httpx.get(f"http://{url}/v1/simul/stats", timeout=TIMEOUT).json()

    async def run() -> tuple[list[dict], list[dict]]:
        sessions = [await Live(url).__aenter__() for _ in SOURCES]
        try:
            for live, source in zip(sessions, SOURCES):  # every session mid-sentence
                await live.words(source.split()[:3])
            during = stats()
            dones = []
            for live, source in zip(sessions, SOURCES):
                await live.words(source.split()[3:])
                dones.append(await live.finish())
            return dones, [during, stats()]
        finally:
            for live in sessions:
                await live.ws.close()

    dones, (during, after) = asyncio.run(asyncio.wait_for(run(), 6 * TIMEOUT))
    for source, done in zip(SOURCES, dones):
        ref = reference(source)
        assert (done["text"], done["delays"]) == (ref.text, ref.delays), source
    engines = during["engines"]
    assert len(engines) == 2
    open_per_engine = [e["active_sessions"] + e["waiting_sessions"] for e in engines]
    assert sum(open_per_engine) == len(SOURCES) == during["open_sessions"]
    assert min(open_per_engine) >= 1  # vLLM's balancer used both engines
    assert during["total_blocks"] == sum(e["total_blocks"] for e in engines)
    assert len(after["tokens_computed"]) >= len(SOURCES)
