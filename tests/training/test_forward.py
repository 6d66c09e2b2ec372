"""The fast training forward (training/forward.py) against the plain ``model(**batch)``.

The reference is the model's own forward with its own loss (``ForCausalLMLoss``), on
the padded batch the trainer feeds: the fast path (shared prefix once per batch, LM
head only at labels) must give the same loss and the same gradient on every LoRA
weight, in float32, for every layout, with lookahead labels, with gradient
accumulation, and for batches whose rows do not share one prompt.  The tiny models
get a system prompt, so the shared prefix is a real one (system turn + instruction).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vllm_exposst import models
from vllm_exposst.prompts import build_prompt
from vllm_exposst.training import forward
from vllm_exposst.training.data import PadCollator, build_dataset, sample_policies
from vllm_exposst.training.trainer import TrainConfig, make_trainer, prepare, train

from .test_trainer import cipher_pairs, layout_loss, write_pairs

SYSTEM = "You are a helpful assistant."
RELATIVE = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")
LAYOUTS = [  # (layout, refeed, lookahead labels)
    ("exposst", True, True),
    ("exposst", True, False),
    ("exposst", False, True),
    ("shift", False, True),
    ("offline", False, False),
]


def prepared_run(
    tmp_path: Path, cache: Path, arch: str, layout: str, refeed: bool, lookahead: bool, **kw
):
    pairs = cipher_pairs(seed=7, count=12)
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", pairs),
        output_dir=str(tmp_path / "out"),
        model=str(models.tiny_model(arch, cache)),
        system_prompt=SYSTEM,
        layout=layout,
        policy="wait-k:1-3",
        slot_len=2,
        refeed=refeed,
        lookahead_labels=lookahead,
        lora_dropout=0.0,
        precision="float32",
        progress=False,
        **kw,
    )
    prepared = prepare(config)
    torch.manual_seed(0)
    for name, weight in prepared.model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: A's gradient would be zero too
            weight.data.normal_(0.0, 0.05)
    return prepared


def batches(prepared, sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    collate = PadCollator(prepared.tokenizer.pad_token_id)
    items = [prepared.train_set[i] for i in range(len(prepared.train_set))]
    out, start = [], 0
    for size in sizes:
        out.append(collate(items[start : start + size]))
        start += size
    return out


def label_count(batch_list: list[dict[str, torch.Tensor]]) -> int:
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch_list)


def loss_and_grads(model, batch_list, loss_of) -> tuple[float, dict[str, torch.Tensor]]:
    """Accumulated loss and LoRA gradients over ``batch_list`` (the Trainer's normalisation)."""
    model.zero_grad()
    items = torch.tensor(label_count(batch_list))
    total = 0.0
    for batch in batch_list:
        loss = loss_of(model, batch, items)
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return total, grads


def plain(model, batch, items):
    return model(**batch, num_items_in_batch=items).loss


def assert_equal(reference, candidate) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = reference, candidate
    assert abs(loss_a - loss_b) <= RELATIVE * abs(loss_a), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        scale = grad.abs().max().item()
        assert scale > 0, f"{name}: no gradient"  # the comparison would be empty
        diff = (grad - grads_b[name]).abs().max().item()
        assert diff <= RELATIVE * scale, (name, diff, scale)


@pytest.mark.parametrize("arch", models.TINY_ARCHS)
@pytest.mark.parametrize(("layout", "refeed", "lookahead"), LAYOUTS)
def test_fast_loss_and_lora_gradients_equal_the_plain_forward(
    tmp_path, model_cache, arch, layout, refeed, lookahead
):
    prepared = prepared_run(tmp_path, model_cache, arch, layout, refeed, lookahead)
    model = prepared.model.train()
    # two accumulated batches of mixed lengths (padding inside each)
    batch_list = batches(prepared, [5, 7])
    assert len({int(m.sum()) for m in batch_list[1]["attention_mask"]}) > 1
    prefix = forward.shared_prefix_len(batch_list[0])
    assert prefix >= prepared.template.prefix_len  # the system prompt and more are shared
    assert forward.causal_lm(model).config._attn_implementation == "sdpa"  # the model's own
    reference = loss_and_grads(model, batch_list, plain)
    assert_equal(reference, loss_and_grads(model, batch_list, forward.fast_loss))
    label_head = loss_and_grads(
        model, batch_list, lambda m, b, n: forward.fast_loss(m, b, n, share_prefix=False)
    )
    assert_equal(reference, label_head)
    forward.set_attention(model, "eager")  # what the trainer's auto picks on the CPU
    assert_equal(reference, loss_and_grads(model, batch_list, forward.fast_loss))


def test_the_trainer_loss_is_the_plain_loss_with_accumulation(tmp_path, model_cache):
    """``LayoutTrainer.compute_loss`` (fast) against the same trainer with ``--plain-forward``."""
    prepared = prepared_run(tmp_path, model_cache, "llama", "exposst", True, True)
    model = prepared.model.train()
    batch_list = batches(prepared, [4, 8])
    attention = lambda: forward.causal_lm(model).config._attn_implementation  # noqa: E731

    def via(trainer):
        return lambda m, b, n: trainer.compute_loss(m, dict(b), num_items_in_batch=n)

    prepared.config.forward = "plain"
    plain_trainer, _ = make_trainer(prepared)
    assert plain_trainer.forward == "plain" and attention() == "sdpa"  # as before
    reference = loss_and_grads(model, batch_list, via(plain_trainer))
    prepared.config.forward = "fast"
    fast_trainer, _ = make_trainer(prepared)
    assert fast_trainer.forward == "fast" and not fast_trainer.cpu_bf16
    assert attention() == "eager"  # --attention auto on the CPU
    assert_equal(reference, loss_and_grads(model, batch_list, via(fast_trainer)))


def test_rows_with_different_prompts_train_as_the_plain_forward(tmp_path, model_cache):
    """Another system prompt or language pair in one batch: only what is shared is shared."""
    prepared = prepared_run(tmp_path, model_cache, "qwen2", "exposst", True, True)
    tokenizer = prepared.tokenizer
    other = build_prompt(tokenizer, "German", "English", system_prompt="Be brief.")
    pairs = cipher_pairs(seed=8, count=6)
    policies = sample_policies(prepared.mix, len(pairs), 0)
    settings = dict(mode="exposst", slot_len=2, max_length=256, lookahead_labels=True)
    own = build_dataset(prepared.template, pairs, policies, **settings)
    foreign = build_dataset(other, pairs, policies, **settings)
    rows = [own[0], foreign[1], own[2], foreign[3], own[4]]
    batch = PadCollator(tokenizer.pad_token_id)(rows)
    shared = forward.shared_prefix_len(batch)
    assert 0 < shared < prepared.template.prefix_len  # "<|im_start|>system\n" only
    model = prepared.model.train()
    assert_equal(
        loss_and_grads(model, [batch], plain), loss_and_grads(model, [batch], forward.fast_loss)
    )
    nothing_shared = dict(batch, input_ids=batch["input_ids"].clone())
    nothing_shared["input_ids"][0, 0] = tokenizer.pad_token_id
    assert forward.shared_prefix_len(nothing_shared) == 0
    assert_equal(
        loss_and_grads(model, [nothing_shared], plain),
        loss_and_grads(model, [nothing_shared], forward.fast_loss),
    )


def test_lora_on_the_upper_layers_only(tmp_path, model_cache):
    prepared = prepared_run(
        tmp_path, model_cache, "llama", "exposst", True, False, lora_top_layers=1
    )
    names = [n for n, p in prepared.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)
    batch_list = batches(prepared, [6])
    assert_equal(
        loss_and_grads(prepared.model.train(), batch_list, plain),
        loss_and_grads(prepared.model.train(), batch_list, forward.fast_loss),
    )
    with pytest.raises(ValueError, match="lora_top_layers=3, but the model has 2 layers"):
        prepared_run(
            tmp_path / "too-many", model_cache, "llama", "exposst", True, False, lora_top_layers=3
        )


def test_compiled_layers_give_the_plain_loss_and_gradients(tmp_path, model_cache):
    """``--compile``: each decoder layer compiled, over batches of two widths (dynamic
    shapes); the fast loss and every LoRA gradient equal the eager plain forward, and
    the parameters keep their names (what is saved)."""
    prepared = prepared_run(tmp_path, model_cache, "llama", "exposst", True, True, compile=True)
    model = prepared.model.train()
    batch_list = batches(prepared, [5, 7])
    assert batch_list[0]["input_ids"].shape[1] != batch_list[1]["input_ids"].shape[1]
    names = [n for n, _ in model.named_parameters()]
    reference = loss_and_grads(model, batch_list, plain)  # before anything is compiled
    trainer, _ = make_trainer(prepared)  # compiles, as a run does
    assert all(
        layer._compiled_call_impl is not None for layer in model.base_model.model.model.layers
    )
    assert [n for n, _ in model.named_parameters()] == names
    via_trainer = lambda m, b, n: trainer.compute_loss(m, dict(b), num_items_in_batch=n)  # noqa: E731
    assert_equal(reference, loss_and_grads(model, batch_list, via_trainer))
    assert forward.compile_decoder_layers(model) == len(model.base_model.model.model.layers)


def test_precision_auto_follows_the_cpu_and_can_be_forced(monkeypatch):
    monkeypatch.setattr(forward, "cpu_native_bf16", lambda: True)
    assert forward.resolve_precision("auto", "cpu") == "bfloat16"
    assert forward.resolve_precision("float32", "cpu") == "float32"
    assert forward.resolve_precision("auto", "cuda") == "float32"
    monkeypatch.setattr(forward, "cpu_native_bf16", lambda: False)
    assert forward.resolve_precision("auto", "cpu") == "float32"
    assert forward.resolve_precision("bfloat16", "cpu") == "bfloat16"


def test_attention_auto_is_eager_for_the_fast_forwards_on_the_cpu():
    assert forward.resolve_attention("auto", "cpu", "fast") == "eager"
    assert forward.resolve_attention("auto", "cpu", "label-head") == "eager"
    assert forward.resolve_attention("auto", "cpu", "plain") == "sdpa"
    assert forward.resolve_attention("auto", "cuda", "fast") == "sdpa"
    assert forward.resolve_attention("sdpa", "cpu", "fast") == "sdpa"
    assert forward.resolve_attention("eager", "cuda", "plain") == "eager"


def test_short_cipher_runs_reach_the_same_held_out_loss_by_both_paths(tmp_path, model_cache):
    """A real run (Trainer, Adam, schedule) by the fast and the plain forward, float32."""
    held_out = cipher_pairs(seed=99, count=20)
    files = write_pairs(tmp_path, "train", cipher_pairs(seed=0, count=200))
    runs = {}
    for path in ("fast", "plain"):
        config = TrainConfig(
            train=files,
            output_dir=str(tmp_path / path),
            model=str(models.tiny_model("llama", model_cache)),
            system_prompt=SYSTEM,
            policy="wait-1",
            slot_len=3,
            lora_dropout=0.0,
            learning_rate=3e-3,
            max_steps=150,
            batch_tokens=1024,
            save_every=0,
            progress=False,
            forward=path,
            precision="float32",
        )
        result = train(config)
        record = json.loads((Path(config.output_dir) / "exposst.json").read_text())
        assert record["training"]["forward"] == path
        assert record["training"]["precision"] == "float32"
        assert record["training"]["attention"] == ("eager" if path == "fast" else "sdpa")
        assert record["training"]["pairs_per_second"] > 0
        from peft import PeftModel

        base, tokenizer = models.load(Path(config.model))
        tuned = PeftModel.from_pretrained(base, config.output_dir).eval()
        template = build_prompt(tokenizer, system_prompt=SYSTEM)
        runs[path] = (result, layout_loss(tuned, template, held_out))
    fast_loss, (plain_result, plain_loss) = runs["fast"][1], runs["plain"]
    first = [e["loss"] for e in plain_result.log_history if "loss" in e][0]
    assert plain_loss < 0.8 * first  # it learned: the comparison is not of two untrained runs
    # float32 sums in another order drift a little over 150 Adam steps, no more
    assert abs(fast_loss - plain_loss) <= 1e-3 * plain_loss, (fast_loss, plain_loss)
