"""Policy-consistent LoRA fine-tuning with ``transformers.Trainer`` and PEFT (design section 4).

Each pair becomes one sequence in event order with the allocated position ids
(:func:`vllm_exposst.training.examples.build_example`); attention is causal over event
order and the loss covers target tokens and the stop token.  Multi-policy training
draws one policy per example from the mix (seeded).  The result is a PEFT adapter
folder that vLLM loads with ``--lora-modules``, plus ``exposst.json`` saying how it
was trained.

    from vllm_exposst.training.trainer import TrainConfig, train
    train(TrainConfig(train=["train.en", "train.de"], output_dir="out", model="default"))

Every input is checked by :func:`prepare` before a step is taken.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .. import models
from ..adapter_meta import write_adapter_meta
from ..prompts import build_prompt
from .checks import (
    CHECKPOINTS,
    check_lora_targets,
    check_options,
    check_output,
    lora_layers,
    resolve_model_path,
    resume_checkpoint,
)
from .config import Prepared, TrainConfig, TrainResult
from .data import (
    LayoutDataset,
    PadCollator,
    TokenBudgetBatchSampler,
    TrainingInputError,
    build_dataset,
    inference_policy,
    read_pairs,
    sample_policies,
    training_policies,
)
from .dev_eval import DevEvaluator
from .dropout import resolve_dropout_masks, set_dropout_masks
from .examples import IGNORE_INDEX
from .forward import (
    compile_decoder_layers,
    fast_loss,
    resolve_attention,
    resolve_precision,
    set_attention,
    supports_fast_forward,
)
from .progress import ProgressBar, ThroughputMeter, TimeLimit
from .record import adapter_meta, last_eval, save_weights


# -- preparation -----------------------------------------------------------------------
def prepare(config: TrainConfig) -> Prepared:
    """Check every input, load the model with LoRA layers and build the datasets."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import set_seed

    check_options(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    mix = training_policies(config.policy)
    inference = inference_policy(config.inference_policy, mix)
    out = check_output(config)
    resume_from = resume_checkpoint(config, out)
    train_pairs = read_pairs(config.train)[: config.max_pairs]
    dev_pairs = read_pairs(config.dev)[: config.eval_sentences] if config.dev else []
    model_path = resolve_model_path(config)

    model, tokenizer = models.load(model_path)
    if not config.full:
        check_lora_targets(model, config.lora_targets)
    try:
        template = build_prompt(
            tokenizer, config.source_lang, config.target_lang, system_prompt=config.system_prompt
        )
    except ValueError as err:
        raise TrainingInputError(f"prompt of {model_path}: {err}") from None
    build = dict(
        mode=config.layout,
        slot_len=config.slot_len,
        lookahead_labels=config.lookahead_labels,
        refeed=config.refeed,
        max_length=config.max_length,
        max_position=getattr(model.config, "max_position_embeddings", None),
    )
    train_set = build_dataset(
        template,
        train_pairs,
        sample_policies(mix, len(train_pairs), config.seed),
        progress=config.progress,
        **build,
    )
    dev_set = dev_eval = None
    if dev_pairs:
        dev_policies = sample_policies(mix, len(dev_pairs), config.seed + 1)
        dev_set = build_dataset(template, dev_pairs, dev_policies, **build)
        decoded = dev_pairs[: config.eval_decode] if config.eval_decode is not None else dev_pairs
        if decoded:
            dev_eval = DevEvaluator(template, decoded, inference, config.layout, config.slot_len)

    set_seed(config.seed)
    if config.full:
        model = model.float().train()  # every weight trains, in float32 (autocast aside)
    elif config.init_adapter:
        # the adapter's shape (rank, alpha, targets, layers) wins; dropout is this run's setting
        own = LoraConfig.from_pretrained(config.init_adapter)
        own.lora_dropout = config.lora_dropout
        model = PeftModel.from_pretrained(
            model.train(), config.init_adapter, is_trainable=True, config=own
        )
    else:
        targets = config.lora_targets
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
            task_type="CAUSAL_LM",
            **lora_layers(model, config.lora_top_layers),
        )
        model = get_peft_model(model.train(), lora)
    return Prepared(
        config,
        model_path,
        model,
        tokenizer,
        template,
        mix,
        inference,
        train_pairs,
        dev_pairs,
        train_set,
        dev_set,
        dev_eval,
        resume_from,
    )


class LayoutTrainer(Trainer):
    """``Trainer`` with token-budget batches of the layout dataset, the fast loss
    (:mod:`.forward`), CPU bfloat16 autocast for training steps, and dev BLEU in ``evaluate``."""

    def __init__(
        self,
        *args: Any,
        batch_tokens: int,
        max_batch_size: int | None = None,
        dev_eval: DevEvaluator | None = None,
        forward: str = "fast",
        cpu_bf16: bool = False,
        meter: ThroughputMeter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_tokens, self.max_batch_size, self.dev_eval = (
            batch_tokens,
            max_batch_size,
            dev_eval,
        )
        self.forward = forward if supports_fast_forward(self.model) else "plain"
        self.cpu_bf16, self.meter = cpu_bf16, meter

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The loss of ``model(**inputs)``, by the configured forward (equal in float32).

        Training steps on the CPU run under bfloat16 autocast when asked; evaluation
        stays in the weights' dtype, so dev losses compare across precisions.
        """
        training = model.training
        if training and self.meter is not None:
            labels = int((inputs["labels"] != IGNORE_INDEX).sum())
            self.meter.count_batch(len(inputs["input_ids"]), labels)
        if self.forward == "plain" or return_outputs or self.label_smoother is not None:
            with self._autocast(training):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # as the plain path: a per-batch mean
        with self._autocast(training):
            return fast_loss(model, inputs, num_items_in_batch, share_prefix=self.forward == "fast")

    def _autocast(self, training: bool) -> Any:
        enabled = self.cpu_bf16 and training
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self.meter is not None:
            logs = {**logs, **self.meter.rates()}
        super().log(logs, *args, **kwargs)

    def _loader(self, dataset: LayoutDataset, shuffle: bool) -> torch.utils.data.DataLoader:
        sampler = TokenBudgetBatchSampler(
            dataset.lengths,
            self.batch_tokens,
            max_batch_size=self.max_batch_size,
            shuffle=shuffle,
            seed=self.args.seed,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        return self._loader(self.eval_dataset if eval_dataset is None else eval_dataset, False)

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Dev loss in the training layout, then BLEU of simultaneous greedy decoding."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.dev_eval is not None:
            start = time.perf_counter()
            scores = self.dev_eval(self.model)
            extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
            extra[f"{metric_key_prefix}_decode_seconds"] = round(time.perf_counter() - start, 2)
            self.log(extra)
            metrics.update(extra)
        return metrics


def device() -> str:
    """Where the Trainer trains: CUDA when it is there, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def precision(config: TrainConfig) -> str:
    """The precision this run trains in on this device (``auto`` resolved)."""
    return resolve_precision(config.precision, device())


def attention(config: TrainConfig) -> str:
    """The attention implementation this run trains with (``auto`` resolved)."""
    return resolve_attention(config.attention, device(), config.forward)


def dropout_masks(config: TrainConfig) -> str:
    """How this run draws LoRA dropout masks (``auto`` resolved)."""
    return resolve_dropout_masks(config.dropout_masks, device(), config.forward)


def training_arguments(config: TrainConfig, has_dev: bool) -> TrainingArguments:
    out = Path(config.output_dir).expanduser() / CHECKPOINTS
    evaluate = has_dev and config.eval_every > 0
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.max_batch_size or 1,  # batches come from the sampler
        per_device_eval_batch_size=config.max_batch_size or 1,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.schedule,
        warmup_steps=int(config.warmup) if config.warmup >= 1 else config.warmup,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        logging_steps=config.log_every,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_every if evaluate else None,
        prediction_loss_only=True,
        save_strategy="steps" if config.save_every > 0 else "no",
        save_steps=config.save_every if config.save_every > 0 else 500,
        save_total_limit=config.keep_checkpoints or None,
        seed=config.seed,
        bf16=device() == "cuda" and precision(config) == "bfloat16",  # CUDA mixed precision
        report_to="none",
        remove_unused_columns=False,  # keep position_ids: PeftModel.forward does not name them
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def make_trainer(prepared: Prepared) -> tuple[LayoutTrainer, ThroughputMeter]:
    """The ``Trainer`` for a prepared run, and the meter that times its steps."""
    config = prepared.config
    set_attention(prepared.model, attention(config))
    set_dropout_masks(prepared.model, dropout_masks(config))
    if config.compile:
        compile_decoder_layers(prepared.model)
    meter = ThroughputMeter()
    trainer = LayoutTrainer(
        model=prepared.model,
        args=training_arguments(config, prepared.dev_set is not None),
        data_collator=PadCollator(_pad_id(prepared.tokenizer)),
        train_dataset=prepared.train_set,
        eval_dataset=prepared.dev_set,
        processing_class=prepared.tokenizer,
        callbacks=[
            meter,
            ProgressBar(meter, enabled=config.progress),
            *([TimeLimit(config.max_minutes)] if config.max_minutes else []),
        ],
        batch_tokens=config.batch_tokens,
        max_batch_size=config.max_batch_size,
        dev_eval=prepared.dev_eval,
        forward=config.forward,
        cpu_bf16=device() == "cpu" and precision(config) == "bfloat16",
        meter=meter,
    )
    trainer.add_callback(CheckpointMeta(prepared, trainer, meter))
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer, meter


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


# -- the run ------------------------------------------------------------------------------
def run_meta(
    prepared: Prepared, trainer: LayoutTrainer, meter: ThroughputMeter, final: dict[str, Any]
) -> dict[str, Any]:
    """``exposst.json`` of the run at its current step: how to run it, and how it was made."""
    config, state = prepared.config, trainer.state
    meta = adapter_meta(prepared, state.global_step, state.log_history, final, meter)
    meta["training"].update(
        planned_steps=state.max_steps,
        keep_checkpoints=config.keep_checkpoints,
        forward=trainer.forward,  # what ran ("plain" where unsupported)
        precision=precision(config),
        attention=attention(config),
        dropout_masks=dropout_masks(config),
        device=device(),
        threads=torch.get_num_threads(),
        compile=config.compile,
    )
    return meta


class CheckpointMeta(TrainerCallback):
    """Writes ``exposst.json`` into every checkpoint the Trainer saves, so each one loads
    as the final output does (``--lora-modules`` or ``--model``): the learning curve of a
    run is then measured with the vLLM engine on its checkpoints."""

    def __init__(self, prepared: Prepared, trainer: LayoutTrainer, meter: ThroughputMeter) -> None:
        self.prepared, self.trainer, self.meter = prepared, trainer, meter

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            final = last_eval(state.log_history, state.global_step)
            meta = run_meta(self.prepared, self.trainer, self.meter, final)
            meta["checkpoint"] = True
            write_adapter_meta(folder, meta)


def train(config: TrainConfig) -> TrainResult:
    """Prepare, train, and write the adapter with ``exposst.json`` and the log."""
    prepared = prepare(config)
    trainer, meter = make_trainer(prepared)
    trainer.train(resume_from_checkpoint=prepared.resume_from)
    final = last_eval(trainer.state.log_history, trainer.state.global_step)
    if prepared.dev_set is not None and not final:
        final = trainer.evaluate()
    out = Path(config.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_weights(prepared, out)
    history = trainer.state.log_history
    steps = trainer.state.global_step
    meta = run_meta(prepared, trainer, meter, final)
    # only the TimeLimit callback ends a run before its planned steps
    meta["training"]["stopped_by_time_limit"] = steps < trainer.state.max_steps
    write_adapter_meta(out, meta)
    (out / "train_log.json").write_text(json.dumps(history, indent=1) + "\n")
    return TrainResult(out, steps, meta, history, meter.tokens, meter.seconds)
