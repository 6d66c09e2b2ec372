"""The weights this repository ships, and which ones a command uses when told nothing.

Every ``exposst-*`` command and ``make demo`` take the shipped ExPosST adapter on the
default model unless told otherwise (``--adapter FOLDER``, ``--model``, or ``--base``
for the bare model), so that a first try translates instead of showing what an
untuned 135M model writes.  The folder is found from the source tree (an editable
install, as ``make setup`` makes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
DEFAULT_ADAPTER = ADAPTERS / "exposst-smollm2"  # what the README and make demo serve


def add_weight_flags(parser: argparse.ArgumentParser) -> None:
    """``--adapter`` and ``--base``, worded the same in every command."""
    parser.add_argument(
        "--adapter",
        type=Path,
        help=f"PEFT LoRA adapter folder (default on --model default: {DEFAULT_ADAPTER.name})",
    )
    parser.add_argument(
        "--base", action="store_true", help="the bare model, without the default adapter"
    )


def chosen_adapter(model: str, adapter: Path | None, base: bool) -> Path | None:
    """The adapter asked for, else the shipped one on the default model, else none."""
    if adapter is not None:
        if base:
            raise ValueError("--adapter and --base exclude each other")
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(f"--adapter {adapter}: no adapter_config.json there (a PEFT folder?)")
        return adapter
    if base or model != "default":
        return None
    return DEFAULT_ADAPTER if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else None
