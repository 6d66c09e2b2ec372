"""The reduced demo ends without a traceback or resource warning (issue 13, item 6).

Runs ``DEMO_MODEL=tiny-llama python -m vllm_exposst.demo`` as a user would, in a
subprocess, and reads its stderr: what the interpreter prints at exit (``Exception
ignored in AsyncLLM.__del__``, the resource tracker's leaked semaphores or shared
memory, pydub's ffmpeg warning) only shows there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[2]
# "leaked": the resource tracker's warning when the engine core was killed instead of
# stopping (a SIGTERM on one of its other threads; see vllm_exposst/patch/teardown.py)
FORBIDDEN = ("Traceback", "Exception ignored", "ffmpeg", "leaked")


def test_reduced_demo_exits_cleanly(model_cache):
    env = {
        **os.environ,
        "DEMO_MODEL": "tiny-llama",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_EXPOSST_CACHE": str(model_cache),
    }
    done = subprocess.run(
        [sys.executable, "-m", "vllm_exposst.demo", "--rate", "20"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in float32" in done.stdout  # the dtype is said, and it is the CPU default
    found = [word for word in FORBIDDEN if word in done.stderr]
    assert not found, f"{found} at exit:\n{done.stderr[-3000:]}"
