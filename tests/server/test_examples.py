"""The README's client examples (examples/*.py) run against a real server (tiny Llama).

Each example runs as a user runs it, in a subprocess; what it prints is compared with
the reference decoder's translation of the same sentences.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import webvtt

from .test_listeners import one_line
from .test_talk import oracle, server  # noqa: F401  (module fixtures: one server here)

pytestmark = pytest.mark.server
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TALK = [
    "A man is walking in the park.",
    "Two dogs play with a red ball.",
    "The old woman reads a book.",
]


def run_example(name: str, *args: str) -> tuple[str, str]:
    """stdout and stderr of ``python examples/NAME ARGS`` (exit code 0 required)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode(), done.stderr.decode()


def test_the_openai_client_example_prints_the_streamed_translation(server, oracle):  # noqa: F811
    out, _ = run_example(
        "openai_client.py", TALK[0], "--url", server.url, "--model", str(server.base)
    )
    ref = oracle(TALK[0], policy="wait-3")
    assert out.startswith(f"{ref.text}\ndelays {ref.delays}, tokens computed ")


def test_the_websocket_client_example_prints_the_live_translation(server, oracle):  # noqa: F811
    url = server.url.replace("http", "ws", 1)
    args = ("--url", url, "--model", str(server.base), "--rate", "40")
    out, _ = run_example("websocket_client.py", TALK[0], *args)
    ref = oracle(TALK[0])
    assert out == f"{ref.text}\ndelays {ref.delays}\n"


def test_the_talk_player_prints_each_sentence_in_order_and_saves_subtitles(
    server,  # noqa: F811
    oracle,  # noqa: F811
    tmp_path,
):
    talk = tmp_path / "talk.en"
    talk.write_text("\n".join(TALK) + "\n")
    url = server.url.replace("http", "ws", 1)
    vtt = tmp_path / "talk.vtt"
    args = ("--url", url, "--model", str(server.base), "--rate", "40", "--subtitles", str(vtt))
    out, err = run_example("talk_player.py", str(talk), *args)
    refs = [oracle(sentence).text for sentence in TALK]
    assert out == "".join(f"{text}\n" for text in refs)
    page = next(line for line in err.splitlines() if line.startswith("caption page: "))
    with urllib.request.urlopen(page.removeprefix("caption page: ")) as reply:
        assert reply.status == 200 and "text/html" in reply.headers["content-type"]
    cues = webvtt.read(str(vtt)).captions
    assert [html.unescape(cue.text) for cue in cues] == [
        one_line(text) for text in refs if text.strip()
    ]


def test_the_talk_player_names_a_missing_file(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "talk_player.py"), str(tmp_path / "nope.en")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no such file" in done.stderr
