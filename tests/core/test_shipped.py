"""Which weights a command takes when told nothing (vllm_exposst/shipped.py)."""

from __future__ import annotations

import pytest

from vllm_exposst.evaluation import cli
from vllm_exposst.shipped import DEFAULT_ADAPTER, chosen_adapter


def test_the_default_model_gets_the_shipped_adapter_unless_base_or_another_is_named(tmp_path):
    assert (DEFAULT_ADAPTER / "adapter_config.json").is_file()
    assert chosen_adapter("default", None, base=False) == DEFAULT_ADAPTER
    assert chosen_adapter("default", None, base=True) is None
    assert chosen_adapter("tiny-llama", None, base=False) is None  # not its adapter
    (tmp_path / "adapter_config.json").write_text("{}")
    assert chosen_adapter("tiny-llama", tmp_path, base=False) == tmp_path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--adapter", "/nonexistent"], "no adapter_config.json"),
        (["--adapter", str(DEFAULT_ADAPTER), "--base"], "exclude each other"),
    ],
)
def test_exposst_eval_names_a_bad_weight_choice(tmp_path, capsys, extra, message):
    (tmp_path / "a.en").write_text("one\n")
    (tmp_path / "a.de").write_text("eins\n")
    argv = ["--source", str(tmp_path / "a.en"), "--target", str(tmp_path / "a.de"), *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
