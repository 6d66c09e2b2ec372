"""``vllm serve`` with --dtype left at auto: float32 on the CPU, said in the log and in
/v1/simul/stats, a merged checkpoint's exposst.json as defaults, and a clean stop."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from vllm_exposst import models
from vllm_exposst.adapter_meta import write_adapter_meta

from .test_server import SERVER_ENV, free_port, wait_healthy

pytestmark = pytest.mark.server
FORBIDDEN = ("Traceback", "Exception ignored", "leaked semaphore", "leaked shared_memory")


def test_auto_dtype_is_float32_said_everywhere_and_the_server_stops_cleanly(model_cache, tmp_path):
    model = tmp_path / "merged"
    shutil.copytree(models.tiny_model("llama", model_cache), model)
    write_adapter_meta(model, {"layout": "exposst", "inference_policy": "wait-2", "slot_len": 5})
    port, log_path = free_port(), tmp_path / "serve.log"
    command = [
        str(Path(sys.executable).parent / "vllm"),
        "serve",
        str(model),
        "--scheduler-cls",
        "vllm_exposst.scheduler.ExposstScheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "4",
    ]  # fmt: skip  (no --dtype: the default is what is tested)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=SERVER_ENV)
        try:
            wait_healthy(process, url, log_path)
            stats = httpx.get(f"{url}/v1/simul/stats").json()
            body = {
                "messages": [{"role": "user", "content": "the dog runs"}],
                "max_tokens": 8,
            }
            reply = httpx.post(f"{url}/v1/simul/chat/completions", json=body, timeout=120)
        finally:
            process.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    text = log_path.read_text()
    assert stats["dtype"] == "float32"
    assert reply.status_code == 200, reply.text
    assert "ExPosST engine dtype: float32 (default for this platform" in text
    assert "dtype=torch.float32" in text  # what vLLM itself reports for the engine
    assert "ExPosST session defaults from" in text and "wait-2" in text
    found = [word for word in FORBIDDEN if word in text]
    assert not found, f"{found} after stopping the server:\n{text[-3000:]}"
    assert json.loads((model / "exposst.json").read_text())["slot_len"] == 5
