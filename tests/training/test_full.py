"""Full fine-tuning (``exposst-train --full``): every weight trains, the output is a
checkpoint folder that transformers and the vLLM engine load as a model.

Independent references: the base checkpoint's own weights (what changed), a plain
transformers model loaded from the output folder with the reference decoder (what the
engine must equal, token by token), and the Trainer's checkpoint folders on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vllm_exposst.adapter_meta import read_adapter_meta
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder
from vllm_exposst.training.trainer import TrainConfig, train

from ..conftest import start_engine
from .test_trainer import cipher_pairs, write_pairs

STEPS = 40
POLICY = "wait-1"
SLOT_LEN = 3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, model_path):
    folder = tmp_path_factory.mktemp("full")
    config = TrainConfig(
        train=write_pairs(folder, "train", cipher_pairs(seed=0, count=200)),
        dev=write_pairs(folder, "dev", cipher_pairs(seed=99, count=8)),
        output_dir=str(folder / "model"),
        model=str(model_path),
        full=True,
        policy=POLICY,
        slot_len=SLOT_LEN,
        learning_rate=1e-3,
        precision="float32",
        max_steps=STEPS,
        batch_tokens=1024,
        eval_every=0,
        eval_decode=0,
        save_every=10,
        keep_checkpoints=0,
        progress=False,
    )
    return config, train(config)


def test_every_weight_trains_and_the_loss_falls(full_run, model_path):
    config, result = full_run
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0], losses
    base = load_file(Path(model_path) / "model.safetensors")
    tuned = load_file(Path(config.output_dir) / "model.safetensors")
    assert base.keys() <= tuned.keys() or tuned.keys() <= base.keys()
    shared = base.keys() & tuned.keys()
    assert len(shared) == len(base)
    changed = [k for k in shared if not torch.equal(base[k].float(), tuned[k].float())]
    assert len(changed) == len(shared), sorted(shared - set(changed))


def test_the_output_is_a_checkpoint_with_its_record(full_run):
    config, result = full_run
    out = Path(config.output_dir)
    assert not (out / "adapter_config.json").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "exposst.json"):
        assert (out / name).exists(), name
    meta = read_adapter_meta(out)
    assert meta == result.meta
    assert meta["full"] is True and meta["lora"] is None and meta["steps"] == STEPS
    assert meta["training"]["keep_checkpoints"] == 0
    # transformers loads it as a model, not as an adapter
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model, "peft_config")


def test_every_checkpoint_is_kept_with_its_exposst_json(full_run):
    config, _ = full_run
    folder = Path(config.output_dir) / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    assert steps == list(range(10, STEPS + 1, 10))
    for step in steps:
        meta = json.loads((folder / f"checkpoint-{step}" / "exposst.json").read_text())
        assert meta["steps"] == step and meta["checkpoint"] is True and meta["full"] is True
        # the same record as the final output's, at the checkpoint's step
        assert meta["training"]["precision"] == "float32" and meta["training"]["forward"] == "fast"


@pytest.mark.engine
def test_the_engine_serves_the_checkpoint_as_the_reference_decoder(full_run, engine_loop):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, _ = full_run
    out = Path(config.output_dir)
    held_out = cipher_pairs(seed=98, count=4)
    engine = start_engine(engine_loop, out)
    try:

        async def run():
            return [
                await engine.translate(s, policy=p, slot_len=SLOT_LEN, max_target_tokens=16)
                for (s, _), p in zip(held_out, ["wait-1", "wait-3", "read-2/write-1", "wait-2"])
            ]

        served = engine_loop.run(run())
    finally:
        engine.shutdown()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    template = build_prompt(AutoTokenizer.from_pretrained(out))
    decoder = ReferenceDecoder(model, template, slot_len=SLOT_LEN, max_target_tokens=16)
    for (source, _), policy, result in zip(
        held_out, ["wait-1", "wait-3", "read-2/write-1", "wait-2"], served
    ):
        reference = decoder.translate(source, policy)
        assert result.target_ids == reference.target_ids, (source, policy)
        assert result.delays == reference.delays
        diff = max(abs(a - b) for a, b in zip(result.logprobs, reference.logprobs))
        assert diff <= 1e-4, (source, policy, diff)
