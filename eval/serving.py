"""`vllm serve` with the plugin, for the benchmark scripts in this folder.

One command line, one start, one health wait and one stop for ``load_ws.py`` and
``bench_two_engines.py``; they run as scripts, so this module is imported as a
sibling (``from serving import ...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_server_flags(parser) -> None:
    """The flags of a benchmark that starts its own ``vllm serve``, worded the same."""
    parser.add_argument("--start-server", metavar="MODEL", required=True, help="'default' ok")
    parser.add_argument("--adapter", type=Path, help="served as LoRA (--lora-modules)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="serve with torch.compile, as the README's command does (default: eager, a "
        "fast start)",
    )
    parser.add_argument("--source", type=Path, help="one sentence per line (else built in)")


def serve_command(
    model: str | Path,
    port: int,
    *,
    max_num_seqs: int = 64,
    max_model_len: int = 2048,
    extra: Sequence[str] = (),
    eager: bool = True,
    options: dict | None = None,
) -> list[str]:
    """float32, eager (a fast start; ``eager=False``: vLLM's torch.compile, as the
    README's command runs), ExPosST's scheduler, ``max_sessions`` = ``max_num_seqs``
    (and the other ``exposst`` ``options`` given)."""
    options = {"exposst": {"max_sessions": max_num_seqs, **(options or {})}}
    return [
        str(Path(sys.executable).parent / "vllm"), "serve", str(model),
        "--scheduler-cls", "vllm_exposst.scheduler.ExposstScheduler",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        *(["--enforce-eager"] if eager else []),
        "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
        "--seed", "0", "--additional-config", json.dumps(options), *extra,
    ]  # fmt: skip


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the server in its own process group (so :func:`stop` takes its engines too)."""
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def wait_healthy(process: subprocess.Popen, base_url: str, timeout: float = 600) -> None:
    """Until ``base_url/health`` answers 200; exits with a message if the server dies."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server at {base_url} did not start")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


def stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM to each server's group, then SIGKILL to what is left after 60 s."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=120).print(table)


def read_sentences(path: Path | None, default: Sequence[str]) -> list[str]:
    """Non-empty lines of ``path`` (stripped), or ``default`` without a file."""
    if path is None:
        return list(default)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


async def speak_sentence(ws, sentence: str, rate: float, sent_at: list[float]) -> None:
    """Send ``sentence`` word by word at ``rate`` words/s (send times into ``sent_at``), commit."""
    for word in sentence.split():
        sent_at.append(time.perf_counter())
        await ws.send(json.dumps({"type": "input_text.append", "text": word + " "}))
        await asyncio.sleep(1.0 / rate)
    await ws.send(json.dumps({"type": "input_text.commit"}))
