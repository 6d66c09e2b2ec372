"""What a training run is given (:class:`TrainConfig`), what it prepares, what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import (
    DEFAULT_REFEED,
    DEFAULT_SLOT_LEN,
    DEFAULT_TRAIN_POLICY,
    SOURCE_LANG,
    TARGET_LANG,
)
from ..policies import Policy
from ..prompts import PromptTemplate
from .data import LayoutDataset, Pair
from .dev_eval import DevEvaluator

PRECISIONS = ("auto", "float32", "bfloat16")
FORWARDS = ("fast", "label-head", "plain")
ATTENTIONS = ("auto", "eager", "sdpa")
DROPOUT_MASKS = ("auto", "fast", "torch")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Everything a run needs; the CLI fills it from its flags."""

    train: list[str]  # [source file, target file] or [pairs .tsv / .jsonl]
    output_dir: str
    model: str = "default"  # checkpoint folder, "default", "tiny-llama" or "tiny-qwen2"
    dev: list[str] | None = None
    source_lang: str = SOURCE_LANG
    target_lang: str = TARGET_LANG
    system_prompt: str | None = None
    layout: str = "exposst"
    policy: str = DEFAULT_TRAIN_POLICY
    inference_policy: str | None = None  # default: the single training policy, else wait-3
    slot_len: int = DEFAULT_SLOT_LEN
    lookahead_labels: bool = False  # examples.add_lookahead_labels
    refeed: bool = DEFAULT_REFEED  # the refeed rule (layout.ExposstAllocator.refeed_due)
    init_adapter: str | None = None  # continue this adapter (its shape wins; dropout is ours)
    full: bool = False  # train every weight (no LoRA); the output is a checkpoint folder
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    learning_rate: float = 2e-4
    schedule: str = "linear"
    warmup: float = 0.03  # < 1: share of the steps; >= 1: steps
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_tokens: int = 4096  # padded tokens per batch
    max_batch_size: int | None = None
    grad_accum: int = 1
    max_length: int = 256  # longer examples are left out (and counted)
    max_pairs: int | None = None  # use the first N training pairs
    seed: int = 0
    resume: str | None = None  # a checkpoint folder, or "latest"
    overwrite: bool = False
    eval_every: int = 500  # steps; 0: only at the end (when dev pairs are given)
    eval_sentences: int = 100  # dev pairs used for dev loss and decoding
    eval_decode: int | None = None  # dev pairs decoded for BLEU (None: all; 0: dev loss only)
    save_every: int = 500  # checkpoint interval in steps; 0: none
    keep_checkpoints: int = 2  # newest checkpoints kept; 0: all (learning curves)
    log_every: int = 10
    precision: str = "auto"  # bfloat16 on CPUs with native bf16, else float32 (forward.py)
    forward: str = "fast"  # fast | label-head | plain (training.forward; plain = model(**batch))
    attention: str = "auto"  # eager on the CPU for fast/label-head, else sdpa (training.forward)
    dropout_masks: str = "auto"  # fast masks on the CPU for fast/label-head (training.dropout)
    lora_top_layers: int | None = None  # LoRA only on the upper N layers (backward stops there)
    compile: bool = False  # torch.compile each decoder layer (training.forward)
    max_minutes: float | None = None  # stop (and save) after this much training time
    save_dtype: str = "float32"  # adapter weights as stored: bfloat16/float16 halve the file
    threads: int | None = None  # torch CPU threads (1 is fastest on a busy CPU)
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class Prepared:
    """A checked run: model with fresh LoRA layers, prompt pieces and datasets."""

    config: TrainConfig
    model_path: Path
    model: Any  # PeftModel, or the model itself when every weight trains (full)
    tokenizer: Any
    template: PromptTemplate
    mix: list[Policy]
    inference: Policy
    train_pairs: list[Pair]
    dev_pairs: list[Pair]
    train_set: LayoutDataset
    dev_set: LayoutDataset | None
    dev_eval: DevEvaluator | None
    resume_from: str | None


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    meta: dict[str, Any]
    log_history: list[dict[str, Any]]
    tokens: int
    train_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0
