"""eval/recipe_ablation.py's bookkeeping: every arm trains on the same seeded sample of
pairs, an arm's own flags win over the shared ones, and the table reads each arm's
results back from the records exposst-train and exposst-eval write."""

from __future__ import annotations

import json
from pathlib import Path

from . import eval_scripts


def load_script():
    return eval_scripts.load_script("recipe_ablation")


def test_the_sample_is_the_same_for_every_call_and_a_subset(tmp_path):
    script = load_script()
    pairs = [f"source {i}\tZiel {i}" for i in range(50)]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(pairs) + "\n\n")
    first = script.sample_pairs(train, 20, 0, tmp_path / "a.tsv").read_text().splitlines()
    again = script.sample_pairs(train, 20, 0, tmp_path / "b.tsv").read_text().splitlines()
    other = script.sample_pairs(train, 20, 1, tmp_path / "c.tsv").read_text().splitlines()
    assert first == again and first != other
    assert len(first) == len(set(first)) == 20 and set(first) <= set(pairs)


def parse_flags(command: list[str]) -> dict[str, str | None]:
    """The trainer's flags as argparse reads them: the last value of a repeated flag."""
    flags: dict[str, str | None] = {}
    for i, word in enumerate(command):
        if word.startswith("--"):
            value = command[i + 1] if i + 1 < len(command) else None
            flags[word] = None if value is None or value.startswith("--") else value
    return flags


def test_arm_flags_win_and_name_the_offline_adapter(tmp_path):
    script = load_script()
    args = script.parse_args(
        ["--train", "t.tsv", "--dev", "d.en", "d.de", "--offline-adapter", "adapters/off",
         "--out", str(tmp_path), "--steps", "7"]
    )  # fmt: skip
    base = parse_flags(script.train_command("from-scratch", Path("p.tsv"), args))
    assert base["--policy"] == "wait-k:1-9" and base["--max-steps"] == "7"
    assert "--init-adapter" not in base and base["--lora-r"] == "8"
    share = parse_flags(script.train_command("offline-share", Path("p.tsv"), args))
    assert share["--init-adapter"] == "adapters/off"
    policies = share["--policy"].split(",")
    assert policies.count("offline") / len(policies) > 0.25  # about 30% offline examples
    assert parse_flags(script.train_command("r16", Path("p.tsv"), args))["--lora-r"] == "16"
    k29 = parse_flags(script.train_command("k2-9", Path("p.tsv"), args))
    assert k29["--policy"] == "wait-k:2-9" and k29["--pairs"] == "p.tsv"


def test_rows_come_from_the_arms_records(tmp_path, capsys):
    script = load_script()
    adapter, evaluation = tmp_path / "adapters" / "k2-9", tmp_path / "eval" / "k2-9"
    adapter.mkdir(parents=True)
    evaluation.mkdir(parents=True)
    training = {"train_seconds": 90.0, "last_loss": 1.5}
    (adapter / "exposst.json").write_text(json.dumps({"steps": 12, "training": training}))
    results = [{"policy": "wait-3", "BLEU": 12.5, "LAAL": 2.9}]
    (evaluation / "record.json").write_text(json.dumps({"results": results}))
    row = script.arm_row("k2-9", tmp_path, "done")
    assert row["steps"] == 12 and row["train_minutes"] == 1.5
    assert row["dev"] == {"wait-3": {"BLEU": 12.5, "LAAL": 2.9}}
    missing = script.arm_row("lookahead", tmp_path, "train failed")
    assert "dev" not in missing and "steps" not in missing
    script.print_table([row, missing])
    table = capsys.readouterr().out.splitlines()
    assert "12.50" in table[1] and "train failed" in table[2]
