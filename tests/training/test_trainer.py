"""The PEFT trainer (design section 4): layout, learning, adapter files, errors.

Independent references: :func:`build_example` for what the trainer feeds, the fixed
layout with an explicit 4-D mask for its loss, a PEFT model loaded from the saved
folder with the reference decoder for what the adapter does, and vLLM sessions on
the same adapter.  Data are made up here: a word-by-word cipher over the tiny
tokenizer's word lists (a 2-layer random model with LoRA learns it in a few hundred
steps; reordering would need far longer).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from vllm_exposst import models
from vllm_exposst.adapter_meta import read_adapter_meta, session_defaults, write_adapter_meta
from vllm_exposst.prompts import build_prompt
from vllm_exposst.reference import ReferenceDecoder
from vllm_exposst.training.cli import main
from vllm_exposst.training.data import PadCollator, TokenBudgetBatchSampler, TrainingInputError
from vllm_exposst.training.dev_eval import score
from vllm_exposst.training.examples import (
    IGNORE_INDEX,
    build_example,
    fixed_layout_mask,
    fixed_layout_order,
)
from vllm_exposst.training.record import cast_adapter_weights
from vllm_exposst.training.trainer import (
    LayoutTrainer,
    TrainConfig,
    make_trainer,
    prepare,
    train,
)

from ..conftest import start_engine

ENGLISH = models.ENGLISH_WORDS[:40]
GERMAN = random.Random(1).sample(models.GERMAN_WORDS, 40)
CIPHER = dict(zip(ENGLISH, GERMAN))
POLICY = "wait-1"  # the cipher is monotone: each word is translatable once it is read
CIPHER_STEPS = 1500
SLOT_LEN = 3  # small, so later source words open new slots between target words
pytestmark = pytest.mark.usefixtures("one_thread")


def cipher_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = [rng.choice(ENGLISH) for _ in range(rng.randint(3, 8))]
        pairs.append((" ".join(words), " ".join(CIPHER[w] for w in words)))
    return pairs


def write_pairs(folder: Path, name: str, pairs: list[tuple[str, str]]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / f"{name}.en", folder / f"{name}.de"
    source.write_text("".join(f"{s}\n" for s, _ in pairs))
    target.write_text("".join(f"{t}\n" for _, t in pairs))
    return [str(source), str(target)]


@pytest.fixture(scope="module")
def cipher_run(tmp_path_factory, model_path):
    """One real training run on the cipher (wait-1), shared by the tests below."""
    folder = tmp_path_factory.mktemp("cipher")
    held_out = cipher_pairs(seed=99, count=30)
    config = TrainConfig(
        train=write_pairs(folder, "train", cipher_pairs(seed=0, count=500)),
        dev=write_pairs(folder, "dev", held_out[:8]),
        output_dir=str(folder / "adapter"),
        model=str(model_path),
        policy=POLICY,
        slot_len=SLOT_LEN,
        lora_dropout=0.0,
        learning_rate=3e-3,
        precision="float32",  # the thresholds below are float32's
        # the refeed layout (default) must learn to attend from the copy to the word just
        # read: after 250 steps the train loss is still ~0.48x its start (the first rule:
        # 0.007x); after 1500 the held-out loss is ~0.03x (docs/design.md: the refeed rule)
        max_steps=CIPHER_STEPS,
        batch_tokens=1024,
        eval_every=CIPHER_STEPS // 2,
        save_every=0,
        log_every=10,
        progress=False,
    )
    return config, train(config), held_out


# -- what the trainer feeds ----------------------------------------------------------------
def unpadded_rows(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int], list[int]]]:
    rows = []
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        rows.append(
            tuple(batch[k][row, :n].tolist() for k in ("input_ids", "position_ids", "labels"))
        )
    return rows


@pytest.mark.parametrize("layout", ["exposst", "shift", "offline"])
def test_the_trainer_feeds_build_example_for_each_pair_and_sampled_policy(
    tmp_path, model_path, layout
):
    pairs = cipher_pairs(seed=5, count=40)
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", pairs),
        output_dir=str(tmp_path / "out"),
        model=str(model_path),
        layout=layout,
        policy="wait-k:1-4,read-2/write-1",
        slot_len=2,
        batch_tokens=300,
        progress=False,
    )
    prepared = prepare(config)
    trainer, _ = make_trainer(prepared)
    dataset = prepared.train_set
    mix = {"wait-1", "wait-2", "wait-3", "wait-4", "read-2/write-1"}
    assert set(dataset.policies) <= mix and len(set(dataset.policies)) > 2  # drawn per example
    assert dataset.policies == prepare(config).train_set.policies  # seeded: same draw again

    tokenizer = prepared.tokenizer
    template = build_prompt(tokenizer, "English", "German")
    expected = {}
    for i, policy in zip(dataset.pair_index, dataset.policies):
        source, target = pairs[i]
        e = build_example(template, source, target, policy, mode=layout, slot_len=2)
        expected[(tuple(e.input_ids), tuple(e.position_ids), tuple(e.labels))] = i
    assert len(dataset) == len(pairs) == len(expected)

    fed = []
    for batch in trainer.get_train_dataloader():
        assert batch["input_ids"].numel() <= config.batch_tokens  # padded size in budget
        fed += [tuple(map(tuple, row)) for row in unpadded_rows(batch)]
    assert sorted(fed) == sorted(expected)  # every pair exactly once, exactly as built


def test_a_padded_batch_has_the_loss_of_the_fixed_layout_with_a_4d_mask(tmp_path, model_path):
    """The trainer's loss on its padded batch equals an independent per-example computation."""
    pairs = cipher_pairs(seed=6, count=6)
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", pairs),
        output_dir=str(tmp_path / "out"),
        model=str(model_path),
        policy="wait-k:1-3",
        slot_len=2,
        precision="float32",  # an exact comparison
        progress=False,
    )
    prepared = prepare(config)
    trainer, _ = make_trainer(prepared)
    model = prepared.model.eval()
    examples = prepared.train_set.examples
    assert len({len(e) for e in examples}) > 1  # padding really happens
    batch = trainer.data_collator([prepared.train_set[i] for i in range(len(examples))])
    with torch.no_grad():
        batch_loss = trainer.compute_loss(model, batch).item()

    total, count = 0.0, 0
    for e in examples:
        order = fixed_layout_order(e)
        allowed = fixed_layout_mask(e, order)
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([[e.input_ids[i] for i in order]]),
                position_ids=torch.tensor([[e.position_ids[i] for i in order]]),
                attention_mask=mask[None, None],
            ).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        row_of = {event: row for row, event in enumerate(order)}
        for i, label in enumerate(e.labels):
            if label != IGNORE_INDEX:  # predicted from the token before it in event order
                total -= logprobs[row_of[i - 1], label].item()
                count += 1
    assert abs(batch_loss - total / count) <= 1e-4


def test_token_budget_batches_cover_everything_within_the_budget():
    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(200)]
    sampler = TokenBudgetBatchSampler(lengths, 256, seed=3)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(200))
    assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in first)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(map(sorted, second)) == sorted(map(sorted, first))
    assert len(sampler) == len(first)


def test_the_collator_pads_right_with_a_mask():
    batch = PadCollator(pad_id=7)(
        [
            {"input_ids": [1, 2, 3], "position_ids": [0, 4, 2], "labels": [-100, 2, 3]},
            {"input_ids": [5], "position_ids": [0], "labels": [5]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 7, 7]]
    assert batch["position_ids"].tolist() == [[0, 4, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# -- learning -------------------------------------------------------------------------------
def layout_loss(model, template, pairs) -> float:
    """Mean NLL of target and stop tokens in the training layout, one pair at a time."""
    total, count = 0.0, 0
    for source, target in pairs:
        e = build_example(template, source, target, POLICY, slot_len=SLOT_LEN)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([e.input_ids]),
                position_ids=torch.tensor([e.position_ids]),
                attention_mask=torch.ones(1, len(e)),
            ).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for i, label in enumerate(e.labels):
            if label != IGNORE_INDEX:
                total -= logprobs[i - 1, label].item()
                count += 1
    return total / count


def translate(model, template, pairs) -> list[str]:
    decoder = ReferenceDecoder(model, template, mode="exposst", slot_len=SLOT_LEN)
    return [decoder.translate(source, POLICY).text for source, _ in pairs]


def test_a_tiny_model_learns_the_cipher(cipher_run, model_path):
    from peft import PeftModel

    config, result, held_out = cipher_run
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert losses[-1] < 0.1 * losses[0], losses

    base, tokenizer = models.load(model_path)
    template = build_prompt(tokenizer)
    tuned = PeftModel.from_pretrained(models.load(model_path)[0], config.output_dir).eval()
    before, after = layout_loss(base, template, held_out), layout_loss(tuned, template, held_out)
    assert after < 0.1 * before, (before, after)

    references = [target for _, target in held_out]
    scores_before = score(translate(base, template, held_out), references)
    scores_after = score(translate(tuned, template, held_out), references)
    assert scores_after["exact"] >= 0.5 > scores_before["exact"], (scores_before, scores_after)
    assert scores_after["bleu"] >= scores_before["bleu"] + 50, (scores_before, scores_after)
    # the periodic dev evaluation ran and was logged
    assert [e["step"] for e in result.log_history if "eval_bleu" in e] == [
        CIPHER_STEPS // 2,
        CIPHER_STEPS,
    ]


def test_the_adapter_folder_and_exposst_json(cipher_run):
    config, result, _ = cipher_run
    out = Path(config.output_dir)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and set(adapter["target_modules"]) == set(config.lora_targets)
    meta = read_adapter_meta(out)
    assert meta == result.meta
    assert meta["layout"] == "exposst" and meta["policy"] == POLICY
    assert meta["inference_policy"] == POLICY and meta["slot_len"] == SLOT_LEN
    assert meta["steps"] == CIPHER_STEPS and meta["seed"] == 0
    assert meta["data"]["train"]["pairs"] == 500 and meta["data"]["dev"]["pairs"] == 8
    assert meta["data"]["train"]["files"] == [str(Path(f).resolve()) for f in config.train]
    assert meta["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": config.lora_targets,
        "layers_to_transform": None,  # every layer (--lora-top-layers not given)
    }
    assert meta["training"]["forward"] == "fast" and meta["training"]["precision"] == "float32"
    assert meta["base_model"] == str(Path(config.model).resolve())
    assert session_defaults(meta) == {
        "policy": POLICY,
        "slot_len": SLOT_LEN,
        "source_lang": "English",
        "target_lang": "German",
        "system_prompt": None,
        "mode": "exposst",
        "refeed": config.refeed,
    }


def test_exposst_json_round_trips(tmp_path):
    meta = {
        "layout": "shift",
        "policy": "wait-k:1-9",
        "inference_policy": "wait-3",
        "slot_len": 5,
        "source_lang": "English",
        "target_lang": "Deutsch",
        "system_prompt": "Übersetze wörtlich.",
        "data": {"train": {"files": ["a.en", "a.de"], "pairs": 3}},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj"]},
    }
    write_adapter_meta(tmp_path, meta)
    assert read_adapter_meta(tmp_path) == meta


# -- the adapter in vLLM ----------------------------------------------------------------------
@pytest.mark.engine
def test_the_adapter_gives_the_same_sessions_in_vllm_and_peft(cipher_run, model_path, engine_loop):
    from peft import PeftModel

    config, _, held_out = cipher_run
    engine = start_engine(
        engine_loop,
        model_path,
        enable_lora=True,
        max_lora_rank=16,
        max_loras=1,
        lora_modules={"cipher": config.output_dir},
    )
    try:
        jobs = [
            (source, policy)
            for (source, _), policy in zip(held_out[:9], ["wait-1", "wait-3", "read-2/write-1"] * 3)
        ]

        async def run(lora):
            return await asyncio.gather(
                *[
                    engine.translate(
                        source, policy=p, slot_len=SLOT_LEN, lora=lora, max_target_tokens=24
                    )
                    for source, p in jobs
                ]
            )

        served = engine_loop.run(run("cipher"))
        plain = engine_loop.run(run(None))
    finally:
        engine.shutdown()

    base, tokenizer = models.load(model_path)
    template = build_prompt(tokenizer)
    tuned = PeftModel.from_pretrained(models.load(model_path)[0], config.output_dir).eval()
    for (source, policy), result, without in zip(jobs, served, plain):
        decoder = ReferenceDecoder(tuned, template, slot_len=SLOT_LEN, max_target_tokens=24)
        reference = decoder.translate(source, policy)
        assert result.target_ids == reference.target_ids, (source, policy)
        assert result.delays == reference.delays
        diff = max(abs(a - b) for a, b in zip(result.logprobs, reference.logprobs))
        assert diff <= 1e-4, (source, policy, diff)
        assert without.target_ids != result.target_ids  # the adapter was really applied


# -- runs, resume and the CLI -------------------------------------------------------------------
class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, model_path):
    from safetensors.torch import load_file

    common = dict(
        train=write_pairs(tmp_path, "train", cipher_pairs(seed=7, count=30)),
        model=str(model_path),
        policy="wait-k:1-3",
        lora_r=4,
        lora_dropout=0.0,
        learning_rate=1e-3,
        max_steps=6,
        batch_tokens=400,
        precision="float32",
        save_every=2,
        progress=False,
    )
    straight = train(TrainConfig(output_dir=str(tmp_path / "straight"), **common))

    crashed = TrainConfig(output_dir=str(tmp_path / "resumed"), **common)
    trainer, _ = make_trainer(prepare(crashed))
    trainer.add_callback(StopAt(4))
    trainer.train()
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    resumed = train(TrainConfig(output_dir=str(tmp_path / "resumed"), resume="latest", **common))

    assert straight.steps == resumed.steps == 6
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    changed = load_file(
        Path(crashed.output_dir) / "checkpoints/checkpoint-4/adapter_model.safetensors"
    )
    assert any(not torch.allclose(a[k], changed[k]) for k in a)  # steps 5, 6 did something


def test_the_cli_trains_from_tsv_and_jsonl(tmp_path, model_path, capsys):
    pairs = cipher_pairs(seed=8, count=20)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in pairs))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs[:3]))
    out = tmp_path / "adapter"
    argv = ["--pairs", str(tsv), "--dev-pairs", str(dev), "--model", str(model_path)]
    argv += ["--policy", "wait-k:1-3", "--max-steps", "3", "--eval-every", "2", "--save-every", "0"]
    argv += ["--lora-r", "4", "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    meta = read_adapter_meta(out)
    assert meta["policy"] == "wait-k:1-3" and meta["inference_policy"] == "wait-3"
    assert meta["steps"] == 3 and meta["data"]["train"]["pairs"] == 20
    assert meta["data"]["dev"]["pairs"] == 3 and "bleu" in meta["dev"]
    history = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in history if "eval_bleu" in e] == [2, 3]
    assert "tokens/s" in capsys.readouterr().err


# -- bad inputs ----------------------------------------------------------------------------------
BAD_INPUTS = {
    "misaligned": (["--source", "{d}/three.en", "--target", "{d}/two.de"], "misaligned files"),
    "empty line": (["--source", "{d}/gap.en", "--target", "{d}/three.de"], "line 2: empty source"),
    "empty target": (["--source", "{d}/three.en", "--target", "{d}/gap.en"], "empty target"),
    "missing file": (["--source", "{d}/nope.en", "--target", "{d}/three.de"], "no such file"),
    "bad tsv": (["--pairs", "{d}/bad.tsv"], "line 2: expected 2 tab-separated fields"),
    "bad jsonl": (["--pairs", "{d}/bad.jsonl"], "line 1: expected"),
    "unknown lora target": (
        ["--lora-targets", "q_proj,qkv"],
        "unknown LoRA target module(s) ['qkv']",
    ),
    "bad policy": (["--policy", "wait-x"], "policy 'wait-x'"),
    "empty range": (["--policy", "wait-k:5-2"], "empty policy range"),
    "no layout": (["--policy", "adaptive-0.5"], "has no training layout"),
    "bad inference policy": (["--inference-policy", "soon"], "inference policy 'soon'"),
    "source alone": (["--source", "{d}/three.en"], "--source and --target go together"),
    "not a model": (["--model", "{d}"], "not a checkpoint folder"),
    "bad dev": (["--dev-source", "{d}/three.en", "--dev-target", "{d}/two.de"], "misaligned"),
    "too long": (["--max-length", "20"], "longer than max_length=20"),
    "zero slot": (["--slot-len", "0"], "slot_len must be an integer >= 1"),
    "zero minutes": (["--max-minutes", "0"], "max_minutes must be > 0"),
    "all-linear and more": (["--lora-targets", "all-linear,q_proj"], "give it alone"),
    "full and init adapter": (["--full", "--init-adapter", "{d}"], "give its folder as --model"),
    "full and top layers": (["--full", "--lora-top-layers", "1"], "--full trains every layer"),
    "negative keep": (["--keep-checkpoints", "-1"], "keep_checkpoints must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_stop_with_a_clear_error_before_training(
    case, tmp_path, model_path, capsys, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(LayoutTrainer, "train", no_training)
    (tmp_path / "three.en").write_text("a man\na dog\na cat\n")
    (tmp_path / "three.de").write_text("ein mann\nein hund\neine katze\n")
    (tmp_path / "two.de").write_text("ein mann\nein hund\n")
    (tmp_path / "gap.en").write_text("a man\n \na cat\n")
    (tmp_path / "bad.tsv").write_text("a man\tein mann\na dog\n")
    (tmp_path / "bad.jsonl").write_text('{"src": "a man", "tgt": "ein mann"}\n')
    extra, message = BAD_INPUTS[case]
    extra = [arg.replace("{d}", str(tmp_path)) for arg in extra]
    argv = ["--model", str(model_path), "-o", str(tmp_path / "out"), "--no-progress"]
    if not any(flag in extra for flag in ("--source", "--pairs")):
        argv += ["--source", str(tmp_path / "three.en"), "--target", str(tmp_path / "three.de")]
    assert main(argv + extra) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("exposst-train: error: ") and message in last_line, last_line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"attention": "flash"}, "unknown attention 'flash'"),
        ({"forward": "quick"}, "unknown forward 'quick'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ],
)
def test_the_python_api_rejects_unknown_kernel_options(tmp_path, model_path, option, message):
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", cipher_pairs(seed=9, count=3)),
        output_dir=str(tmp_path / "out"),
        model=str(model_path),
        progress=False,
        **option,
    )
    with pytest.raises(TrainingInputError, match=message):
        prepare(config)


def test_continuing_an_adapter_keeps_its_shape_and_weights_and_takes_this_runs_dropout(
    tmp_path, model_path
):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    files = write_pairs(tmp_path, "train", cipher_pairs(seed=5, count=20))
    common = dict(train=files, model=str(model_path), slot_len=4, save_every=0, progress=False)
    first = train(
        TrainConfig(
            output_dir=str(tmp_path / "first"),
            lora_r=4,
            lora_alpha=8,
            max_steps=3,
            batch_tokens=300,
            **common,
        )
    )
    prepared = prepare(
        TrainConfig(
            output_dir=str(tmp_path / "second"),
            lora_r=16,
            lora_dropout=0.0,
            init_adapter=str(first.output_dir),
            **common,
        )
    )
    own = prepared.model.peft_config["default"]
    assert own.r == 4 and own.lora_alpha == 8 and own.lora_dropout == 0.0
    saved = load_file(str(first.output_dir / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(prepared.model)
    assert saved.keys() == loaded.keys() and saved
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    dropouts = [m for n, m in prepared.model.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(isinstance(m, torch.nn.Identity) for m in dropouts)  # none drawn
    assert all(p.requires_grad for n, p in prepared.model.named_parameters() if "lora_" in n)


def test_an_existing_adapter_is_not_overwritten_silently(tmp_path, model_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"")
    files = write_pairs(tmp_path, "train", cipher_pairs(seed=9, count=3))
    argv = ["--source", files[0], "--target", files[1], "--model", str(model_path), "-o", str(out)]
    assert main(argv) == 2
    assert "already holds an adapter" in capsys.readouterr().err


def test_a_time_limit_stops_the_run_and_keeps_its_adapter(tmp_path, model_path):
    pairs = cipher_pairs(seed=3, count=60)
    config = TrainConfig(
        train=write_pairs(tmp_path, "train", pairs),
        output_dir=str(tmp_path / "out"),
        model=str(model_path),
        slot_len=4,
        max_steps=500,
        batch_tokens=300,
        max_minutes=0.002,  # 0.12 s: a few steps
        save_every=0,
        progress=False,
    )
    result = train(config)
    training = result.meta["training"]
    assert 1 <= result.steps < 500 and training["planned_steps"] == 500
    assert training["stopped_by_time_limit"] is True
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    data = result.meta["data"]["train"]
    assert data["mean_tokens"] == round(data["tokens"] / data["examples"], 2)
    # reserved slots: the position span of an ExPosST example exceeds its token count
    assert data["mean_positions"] > data["mean_tokens"]


def test_a_bfloat16_adapter_holds_the_rounded_weights_and_loads_in_peft(tmp_path, model_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    config = TrainConfig(
        train=write_pairs(tmp_path, "train", cipher_pairs(seed=4, count=20)),
        output_dir=str(tmp_path / "f32"),
        model=str(model_path),
        learning_rate=1e-2,
        max_steps=3,
        batch_tokens=300,
        save_every=0,
        progress=False,
    )
    train(config)
    folder = tmp_path / "f32"
    full = load_file(str(folder / "adapter_model.safetensors"))
    half = tmp_path / "bf16"
    half.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (half / name).write_bytes((folder / name).read_bytes())
    cast_adapter_weights(half, "bfloat16")
    stored = load_file(str(half / "adapter_model.safetensors"))
    assert stored.keys() == full.keys()
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    assert any(t.abs().max() > 0 for t in stored.values())  # trained B matrices are not zero

    base, _ = models.load(model_path)
    peft_model = PeftModel.from_pretrained(base, str(half))
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(full)
    for name, value in full.items():
        key = name.replace(".weight", ".default.weight")  # PEFT names the adapter "default"
        assert torch.equal(loaded[key].float(), value.to(torch.bfloat16).float()), name
