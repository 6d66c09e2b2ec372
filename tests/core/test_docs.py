"""What the README and docs/api.md name still exists: commands and their flags, example
scripts and theirs, routes, and the event types of the protocol tables.

Read from the Markdown itself, checked against the code's parsers and router, so that
renaming a flag, a route or an event without the docs fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ..markdown_blocks import blocks

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "api.md"]
COMMANDS = {
    "exposst-decode": "vllm_exposst.decode_cli",
    "exposst-train": "vllm_exposst.training.cli",
    "exposst-eval": "vllm_exposst.evaluation.cli",
    "exposst-merge": "vllm_exposst.merge",
}


def shell_lines(path: Path) -> list[str]:
    """Each command of the file's ```bash blocks, continuation lines joined."""
    return [line for block in blocks(path) if block.language == "bash" for line in block.commands()]


def documented_calls() -> list[tuple[str, str, list[str]]]:
    """(doc, program, flags) for every exposst-* command and examples/*.py script."""
    calls = []
    for doc in DOCS:
        for line in shell_lines(doc):
            try:
                words = shlex.split(line)
            except ValueError:  # a quoted JSON body that goes on over several lines
                words = line.split()
            for i, word in enumerate(words):
                name = Path(word).name
                if name in COMMANDS or (word.startswith("examples/") and name.endswith(".py")):
                    flags = [w.split("=")[0] for w in words[i + 1 :] if w.startswith("--")]
                    calls.append((doc.name, word if name not in COMMANDS else name, flags))
    return calls


def help_text(program: str) -> str:
    module = ["-m", COMMANDS[program]] if program in COMMANDS else [str(ROOT / program)]
    done = subprocess.run(
        [sys.executable, *module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_docs_show_commands_and_examples():
    programs = {program for _, program, _ in documented_calls()}
    assert {"exposst-train", "exposst-eval", "examples/talk_player.py"} <= programs


@pytest.mark.parametrize(
    "doc, program, flags", documented_calls(), ids=lambda v: v if isinstance(v, str) else None
)
def test_every_documented_flag_exists(doc, program, flags):
    text = help_text(program)
    missing = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not missing, f"{doc}: {program} has no {missing}"


def documented_routes() -> set[str]:
    text = "\n".join(doc.read_text() for doc in DOCS)
    paths = re.findall(r"(/(?:v1/)?simul/[a-z_./{}<>-]*[a-z}>])", text)
    return {re.sub(r"<[^>]+>|\{[^}]+\}", "{name}", p).split("?")[0] for p in paths}


def test_every_documented_route_exists():
    from fastapi import FastAPI

    from vllm_exposst.server.routes import ExposstRoutes

    app = FastAPI()
    ExposstRoutes().attach_router(app)
    served = {route.path for route in app.routes}
    served |= {path.replace("{name}", "{name}") for path in served}
    documented = documented_routes()
    assert "/v1/simul/realtime" in documented
    unknown = set()
    for path in documented:
        if path in served:
            continue
        # /simul/subtitles/{name}.vtt is the route /simul/subtitles/{name}
        if not any(re.fullmatch(re.sub(r"\\\{name\\\}", ".+", re.escape(s)), path) for s in served):
            unknown.add(path)
    assert not unknown, f"documented but not served: {sorted(unknown)}"


def test_every_event_in_the_protocol_tables_is_in_the_code():
    text = (ROOT / "docs" / "api.md").read_text()
    events = set(re.findall(r"^\| `([a-z_]+\.[a-z_.]+)`", text, re.M))
    assert {"session.update", "input_text.append", "response.output_text.delta"} <= events
    code = "\n".join(p.read_text() for p in (ROOT / "vllm_exposst" / "server").glob("*.py"))
    missing = sorted(event for event in events if f'"{event}"' not in code)
    assert not missing, f"api.md names events the server neither takes nor sends: {missing}"
