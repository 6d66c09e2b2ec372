"""Every shell and Python block of the README and docs/api.md runs as shown, or says why not.

Each block carries a ``doc-test`` comment (tests/markdown_blocks.py): a ``serve`` block
is started as a real ``vllm serve``; the file's ``client`` blocks then run against it,
in order; ``local`` blocks run in a scratch folder.  A block without a comment fails.

The tiny random Llama stands in for SmolLM2, so a block is changed only where it names
weights or an address, always the same way:

- ``~/.cache/vllm-exposst/SmolLM2-135M-Instruct`` and ``--model default`` become the
  tiny model; a command that names no model gets ``--model`` with it;
- ``adapters/exposst-smollm2`` becomes a random LoRA on the tiny model (every projection);
- ``localhost:8000`` becomes the test server's loopback port, and so does
  ``EXPOSST_URL``, the examples' default address (a client's shell block runs whole,
  ``bash -e``: a quoted JSON body may span lines);
- a served block also gets ``--host 127.0.0.1 --port P --dtype float32 --enforce-eager
  --max-model-len 1024`` (the tiny model's length) at the end.

What a block prints is checked for what it promises (an answer, not an error; the
files it says it writes, read back with their own parsers); that the text equals the
reference decoder's is asserted in test_examples.py and test_server.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import webvtt

from vllm_exposst import models

from ..conftest import EVERY_PROJECTION, make_random_adapter
from ..markdown_blocks import Block, runnable_blocks
from .test_server import SERVER_ENV, free_port, stop_process, wait_healthy

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
DOCS = {"README.md": ROOT / "README.md", "api.md": ROOT / "docs" / "api.md"}
SMOLLM2 = "~/.cache/vllm-exposst/SmolLM2-135M-Instruct"
SHIPPED_ADAPTER = "adapters/exposst-smollm2"
TALK = "A man is walking in the park.\nTwo dogs play with a red ball.\n"  # my-talk.en
TIMEOUT = 300


def all_blocks() -> list[Block]:
    return [block for path in DOCS.values() for block in runnable_blocks(path)]


def test_every_block_is_run_or_says_why_not():
    unmarked = [block.name for block in all_blocks() if block.kind is None]
    assert not unmarked, f"blocks without a <!-- doc-test: ... --> comment: {unmarked}"
    for doc, path in DOCS.items():
        kinds = [block.kind for block in runnable_blocks(path)]
        assert "client" not in kinds or kinds.count("serve") == 1, f"{doc}: one serve block"


class Weights:
    """The tiny stand-ins for the documented weights, and the substitutions they make."""

    def __init__(self, model_cache: Path, folder: Path) -> None:
        self.model = models.tiny_model("llama", model_cache)
        self.adapter = folder / "tiny-adapter"
        if not self.adapter.exists():
            make_random_adapter(self.model, self.adapter, seed=7, modules=EVERY_PROJECTION)

    def words(self, command: str) -> tuple[dict[str, str], list[str]]:
        """(environment assignments, argv) of one documented shell command."""
        words = shlex.split(command)
        env = {}
        while words and "=" in words[0] and not words[0].startswith("-"):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        bin_dir = str(Path(sys.executable).parent)
        argv = []
        for word in words:
            word = word.replace(".venv/bin", bin_dir, 1) if word.startswith(".venv/bin/") else word
            word = str(self.model) if word == SMOLLM2 else word
            word = word.replace(f"={SHIPPED_ADAPTER}", f"={self.adapter}")
            argv.append(str(self.adapter) if word == SHIPPED_ADAPTER else word)
        if "--model" in argv:
            at = argv.index("--model") + 1
            argv[at] = str(self.model) if argv[at] == "default" else argv[at]
        elif any(Path(w).name in ("exposst-eval", "exposst-train", "simuleval") for w in argv[:1]):
            argv += ["--model", str(self.model)]
        return env, argv


def scratch(folder: Path) -> Path:
    """A working folder where the README's relative paths (examples/, eval/) resolve."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("examples", "eval"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    (folder / "my-talk.en").write_text(TALK)
    return folder


def run(argv: list[str], env: dict[str, str], cwd: Path, block: Block) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"{block.name}: {shlex.join(argv)}\n{done.stderr[-3000:]}"
    return done.stdout


def check_answer(block: Block, out: str) -> None:
    """What a client prints: something, and if it starts with JSON, a chat answer (not an
    error) with its ``simul`` object."""
    assert out.strip(), f"{block.name} printed nothing"
    if out.lstrip().startswith("{"):
        answer, _ = json.JSONDecoder().raw_decode(out.lstrip())
        assert "error" not in answer and answer["choices"][0]["message"]["content"], answer
        assert answer["simul"]["delays"], answer


def start_served_block(block: Block, weights: Weights, folder: Path):
    """The serve block's command, started; returns (process, port, log)."""
    (command,) = block.commands()
    port = free_port()
    env, argv = weights.words(command)
    argv += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    argv += ["--enforce-eager", "--max-model-len", "1024"]
    log = folder / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=folder, env={**SERVER_ENV, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}", log)
    except BaseException:
        stop_process(process)
        raise
    return process, port, log


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_the_client_blocks_run_against_the_documented_server(doc, model_cache, tmp_path):
    blocks = runnable_blocks(DOCS[doc])
    (serve,) = [block for block in blocks if block.kind == "serve"]
    folder = scratch(tmp_path / "work")
    weights = Weights(model_cache, tmp_path)
    process, port, log = start_served_block(serve, weights, folder)
    env = {"EXPOSST_URL": f"http://127.0.0.1:{port}"}
    try:
        for block in (block for block in blocks if block.kind == "client"):
            if block.language == "python":
                script = folder / f"block_{block.line}.py"
                script.write_text(block.text.replace("localhost:8000", f"127.0.0.1:{port}"))
                check_answer(block, run([sys.executable, str(script)], env, folder, block))
                continue
            # a shell block as a whole (a quoted JSON body may span lines), stopping at
            # the first failing command; only its address changes
            text = block.text.replace("localhost:8000", f"127.0.0.1:{port}")
            text = text.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
            check_answer(block, run(["bash", "-e", "-c", text], env, folder, block))
        if doc == "README.md":  # the talk player's subtitles, read by a WebVTT parser
            cues = webvtt.read(str(folder / "my-talk.vtt")).captions
            assert len(cues) == TALK.count("\n"), [cue.text for cue in cues]
    finally:
        stop_process(process)
    assert "Traceback" not in log.read_text()


def test_the_local_blocks_run_and_write_what_they_say(model_cache, tmp_path):
    folder = scratch(tmp_path / "work")
    weights = Weights(model_cache, tmp_path)
    local = [block for block in runnable_blocks(DOCS["README.md"]) if block.kind == "local"]
    assert local, "the README shows no training or evaluation command"
    for block in local:
        for command in block.commands():
            env, argv = weights.words(command)
            run(argv, env, folder, block)
    adapter = folder / "out" / "my-adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (adapter / "adapter_model.safetensors").is_file()
    record = json.loads((adapter / "exposst.json").read_text())
    assert record["steps"] == 40 and record["layout"] != "offline", record
    evaluated = list((folder / "out" / "eval").rglob("*.json"))
    assert evaluated, "exposst-eval wrote no record"
    scores = list((folder / "out" / "simuleval").rglob("scores*"))
    assert scores, "simuleval wrote no scores"
