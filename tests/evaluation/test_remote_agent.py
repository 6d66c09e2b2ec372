"""The SimulEval agent for a running server (``RemoteExposstAgent``, ``eval/remote_agent.py``).

One ``vllm serve`` on the tiny Llama (127.0.0.1) and one in-process engine on the same
checkpoint: through SimulEval's evaluator, the remote agent must give exactly the
in-process agent's words and delays (greedy decoding).  Server failures must raise
:class:`RemoteAgentError`, never hang.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vllm_exposst import models
from vllm_exposst.evaluation import agents, logs
from vllm_exposst.evaluation.remote_agent import RemoteAgentError, RemoteExposstAgent, realtime_url

from ..conftest import engine_for_module, write_test_set
from ..server.test_server import SERVER_ENV, free_port, serve_command, stop_process, wait_healthy

REPO = Path(__file__).resolve().parents[2]
API_KEY = "remote-key"
PAIRS = [
    ("a man walks in the park", "ein mann geht im park"),
    ("two dogs play with a red ball near the tree", "zwei hunde spielen mit einem roten ball"),
    ("three children are eating", "drei kinder essen"),
    ("a black cat looks at the water", "eine schwarze katze schaut auf das wasser"),
]
RUNS = [("exposst", "wait-1"), ("shift", "read-2/write-1"), ("exposst", "token-wait-2")]
# two engines on a shared machine: let the OS place their threads (docs/evaluation.md)
NOBIND = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


@pytest.fixture(scope="module")
def tiny_path(model_cache):
    return models.tiny_model("llama", model_cache)


@pytest.fixture(scope="module")
def server_url(tiny_path, tmp_path_factory):
    """``ws://127.0.0.1:PORT`` of a ``vllm serve`` with the plugin on the tiny Llama."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("remote") / "serve.log"
    options = {"exposst": {"policy": "wait-3", "slot_len": 3, "max_sessions": 8}}
    command = serve_command(
        tiny_path, options, port,
        "--host", "127.0.0.1", "--api-key", API_KEY, "--max-num-seqs", "8", "--seed", "0",
    )  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**SERVER_ENV, **NOBIND}
        )
        try:
            wait_healthy(process, f"http://127.0.0.1:{port}", log_path)
            yield f"ws://127.0.0.1:{port}"
        finally:
            stop_process(process)


@pytest.fixture(scope="module")
def engine(engine_loop, tiny_path):
    yield from engine_for_module(
        engine_loop, tiny_path, env=NOBIND, max_num_seqs=8, enable_prefix_caching=False
    )


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_test_set(tmp_path_factory.mktemp("data"), PAIRS)


def simuleval_argv(data_files, out: Path) -> list[str]:
    return ["--source", str(data_files[0]), "--target", str(data_files[1]), "--output", str(out)]


def remote_agent(server_url: str, **options) -> RemoteExposstAgent:
    options = {"server_url": server_url, "api_key": API_KEY, "timeout": 60.0, **options}
    return RemoteExposstAgent(RemoteExposstAgent.options(**options))


def evaluate(agent, data_files, out: Path):
    """SimulEval's evaluator in this process: (evaluator, instances.log lines)."""
    evaluator = agents.evaluate_agent(
        agent, [*simuleval_argv(data_files, out), "--no-progress-bar"]
    )
    return evaluator, logs.read_instances(out / "instances.log")


@pytest.fixture(scope="module")
def in_process(engine, engine_loop, data_files, tmp_path_factory):
    """The in-process agent's SimulEval log and transcripts, per (mode, policy)."""
    done = {}

    def get(mode: str, policy: str):
        if (mode, policy) not in done:
            agent = agents.ExposstAgent.attach(
                engine, engine_loop.run, slot_len=3, mode=mode, policy=policy
            )
            out = tmp_path_factory.mktemp("in-process")
            done[mode, policy] = evaluate(agent, data_files, out)[1], agent.transcripts
        return done[mode, policy]

    return get


@pytest.mark.server
@pytest.mark.parametrize("mode,policy", RUNS)
def test_remote_agent_gives_the_in_process_agents_words_and_delays(
    mode, policy, server_url, in_process, data_files, tmp_path
):
    agent = remote_agent(server_url, mode=mode, policy=policy, slot_len=3)
    assert agent.settings["policy"] == policy and agent.settings["mode"] == mode
    evaluator, theirs = evaluate(agent, data_files, tmp_path)
    agent.close()
    ours, transcripts = in_process(mode, policy)
    assert len(theirs) == len(ours) == len(PAIRS)
    for remote, local in zip(theirs, ours):
        assert remote["prediction"] == local["prediction"]
        assert remote["delays"] == local["delays"]
        assert remote["source_length"] == local["source_length"]
    assert agent.transcripts == transcripts  # continuations included
    if policy.startswith("token-"):  # words that go on after a READ: the case to get right
        assert any(word.continues for words in transcripts for word in words)
    scores = evaluator.results.iloc[0].to_dict()
    assert 0.0 <= scores["BLEU"] <= 100.0
    longest = max(len(src.split()) for src, _ in PAIRS)
    assert 0.0 < scores["LAAL"] <= longest and math.isfinite(scores["AL"])


@pytest.mark.server
def test_simuleval_cli_runs_the_remote_agent_file(server_url, in_process, data_files, tmp_path):
    """``simuleval --agent eval/remote_agent.py --server-url ...`` as documented."""
    cmd = [sys.executable, "-m", "simuleval.cli", "--agent", str(REPO / "eval" / "remote_agent.py")]
    cmd += simuleval_argv(data_files, tmp_path / "se")
    cmd += ["--server-url", server_url, "--policy", "wait-3", "--slot-len", "3"]
    cmd += ["--no-progress-bar"]
    env = {**os.environ, "VLLM_API_KEY": API_KEY}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = logs.read_instances(tmp_path / "se" / "instances.log")
    ours, _ = in_process("exposst", "wait-3")
    assert [i["prediction"] for i in theirs] == [i["prediction"] for i in ours]
    assert [i["delays"] for i in theirs] == [i["delays"] for i in ours]
    assert "LAAL" in done.stdout and "BLEU" in done.stdout


@pytest.mark.server
def test_server_errors_raise_a_clear_exception(server_url, data_files, tmp_path):
    with pytest.raises(RemoteAgentError, match="invalid_parameter.*wait-q"):
        remote_agent(server_url, policy="wait-q")
    with pytest.raises(RemoteAgentError, match="model_not_found"):
        remote_agent(server_url, model="nope")
    with pytest.raises(RemoteAgentError, match="cannot connect.*401"):
        remote_agent(server_url, api_key="wrong")
    # a session that fails mid-sentence: a source past the position limit (1024)
    long = tmp_path / "long.en"
    long.write_text(" ".join(["the dog walks in the park"] * 200) + "\n")
    (tmp_path / "long.de").write_text("der hund\n")
    agent = remote_agent(server_url, policy="offline", mode="offline")
    started = time.monotonic()
    with pytest.raises(RemoteAgentError, match="context_length_exceeded|max_model_len"):
        evaluate(agent, (long, tmp_path / "long.de"), tmp_path / "out")
    assert time.monotonic() - started < 60
    agent.close()


def fake_server(behaviour: str):
    """A WebSocket server that sends ``session.created`` and then closes or falls silent."""
    from websockets.sync.server import serve

    def handler(ws):
        ws.send(json.dumps({"type": "session.created", "session": {}}))
        if behaviour == "close":
            ws.close()
        else:
            for _ in ws:  # read, never answer
                pass

    server = serve(handler, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"ws://127.0.0.1:{server.socket.getsockname()[1]}"


@pytest.mark.parametrize(
    "behaviour,message", [("close", "closed the connection"), ("silent", "no event")]
)
def test_a_closed_or_silent_server_raises_instead_of_hanging(behaviour, message, tmp_path):
    (tmp_path / "a.en").write_text("a man walks\n")
    (tmp_path / "a.de").write_text("ein mann geht\n")
    server, url = fake_server(behaviour)
    try:
        agent = RemoteExposstAgent(RemoteExposstAgent.options(server_url=url, timeout=1.0))
        with pytest.raises(RemoteAgentError, match=message):
            evaluate(agent, (tmp_path / "a.en", tmp_path / "a.de"), tmp_path / "out")
        agent.close()
    finally:
        server.shutdown()


def test_server_url_forms():
    assert realtime_url("ws://h:1") == "ws://h:1/v1/simul/realtime"
    assert realtime_url("http://h:1/") == "ws://h:1/v1/simul/realtime"
    assert realtime_url("wss://h/v1/simul/realtime") == "wss://h/v1/simul/realtime"
    with pytest.raises(ValueError, match="server-url"):
        realtime_url("h:1")
