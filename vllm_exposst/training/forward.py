"""How a training batch becomes a loss, fast and with the same result (docs/training.md).

Two cuts, both exact in float32 (tests/training/test_forward.py compares the loss and
every LoRA gradient with ``model(**batch)``):

- **The shared prefix once per batch.**  Every example starts with the same prompt
  prefix (system prompt and instruction, at positions ``0..P-1``).  The columns that
  all rows share, token, position and mask alike, are run once (batch 1, with
  gradients: LoRA changes them) and their keys and values are expanded over the
  batch; the rest of each row attends to them through the cache.  The prefix is
  found from the batch itself, so another system prompt or language pair needs no
  setting, and a batch whose rows share nothing runs whole.
- **The LM head only where labels are.**  The head (``vocab x hidden``) and the
  cross-entropy run on the labelled positions only (about a third of them); the
  loss is summed and divided by ``num_items_in_batch`` when the Trainer gives it,
  as ``ForCausalLMLoss`` does, so gradient accumulation normalises the same way.

With LoRA dropout the shared prefix draws one dropout mask for the whole batch instead
of one per row: the same expectation, slightly correlated noise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..precision import cpu_native_bf16
from .examples import IGNORE_INDEX

# Causal LMs whose logits are exactly ``lm_head(final hidden state)``.  Others (logit
# soft-capping, logit scales) take the plain path.
_UNSCALED_LOGITS_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def resolve_precision(requested: str, device_type: str) -> str:
    """What ``auto`` trains in: bfloat16 autocast on a CPU with native bf16, else float32.

    On CUDA ``auto`` stays float32 (``bfloat16`` turns on the Trainer's mixed precision).
    """
    if requested != "auto":
        return requested
    if device_type == "cpu" and cpu_native_bf16():
        return "bfloat16"
    return "float32"


def resolve_attention(requested: str, device_type: str, forward: str) -> str:
    """What ``auto`` trains with: eager attention for the fast forwards on the CPU, else sdpa.

    On this CPU, PyTorch's SDPA kernel (its backward most) took a seventh of a
    fast bf16 step on batches of about 24 x 90; the eager products and softmax cost a
    fifth of that (docs/training.md).  The plain forward keeps the model's own default,
    as before; CUDA keeps sdpa.
    """
    if requested != "auto":
        return requested
    return "eager" if device_type == "cpu" and forward != "plain" else "sdpa"


def set_attention(model: Any, attention: str) -> None:
    """Switch the model's attention implementation in place (weights untouched)."""
    lm = causal_lm(model)
    if getattr(lm.config, "_attn_implementation", None) != attention:
        lm.set_attn_implementation(attention)


def causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def compile_decoder_layers(model: Any) -> int:
    """Compile each decoder layer in place (``torch.compile``, dynamic shapes); how many.

    Regional compilation: the 30 layers share one compiled graph, and the code around
    them (the shared-prefix cache, PEFT's wrappers, the loss) stays eager, so a batch of
    a new width does not recompile the whole model.  Inductor fuses the norms,
    activations and rotary embeddings the eager path runs op by op; on a quiet 2-core
    CPU that gained 1-3% (docs/training.md).  The first steps pay the compilation (up to
    a minute there); the weights, their names and what is saved do not change.  A
    second call does nothing.
    """
    layers = getattr(getattr(causal_lm(model), "model", None), "layers", None)
    if layers is None:
        return 0
    for layer in layers:
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(dynamic=True)
    return len(layers)


def supports_fast_forward(model: Any) -> bool:
    """Whether :func:`fast_loss` reproduces ``model(**batch).loss`` for this model."""
    lm = causal_lm(model)
    if not (hasattr(lm, "model") and hasattr(lm, "lm_head")):
        return False
    config = lm.config
    return not any(
        getattr(config, name, None) not in (None, 1, 1.0) for name in _UNSCALED_LOGITS_ATTRS
    )


def shared_prefix_len(batch: dict[str, torch.Tensor]) -> int:
    """Leading columns that every row shares (token, position, mask 1); at most width - 1."""
    ids, positions, mask = batch["input_ids"], batch["position_ids"], batch["attention_mask"]
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(0) & (positions == positions[:1]).all(0) & (mask == 1).all(0)
    shared = int(same.long().cumprod(0).sum())
    return min(shared, ids.shape[1] - 1)


def _hidden_states(lm: Any, batch: dict[str, torch.Tensor], prefix: int) -> torch.Tensor:
    """Final hidden states ``[batch, width, hidden]``, the first ``prefix`` columns run once."""
    decoder = lm.model
    ids, positions, mask = batch["input_ids"], batch["position_ids"], batch["attention_mask"]
    if prefix == 0:
        return decoder(input_ids=ids, position_ids=positions, attention_mask=mask).last_hidden_state
    from transformers import DynamicCache

    rows = ids.shape[0]
    head = decoder(input_ids=ids[:1, :prefix], position_ids=positions[:1, :prefix], use_cache=True)
    cache = DynamicCache()
    for index, layer in enumerate(head.past_key_values.layers):
        cache.update(
            layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index
        )
    rest = decoder(
        input_ids=ids[:, prefix:],
        position_ids=positions[:, prefix:],
        attention_mask=mask,  # the whole width: the cached prefix columns included
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    return torch.cat([head.last_hidden_state.expand(rows, -1, -1), rest], dim=1)


def labelled_loss(
    lm: Any,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``labels[:, 1:]`` from ``hidden[:, :-1]``, the head only where labelled."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = lm.lm_head(hidden[:, :-1][keep]).float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep])
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def fast_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None = None,
    *,
    share_prefix: bool = True,
) -> torch.Tensor:
    """The loss ``model(**batch, num_items_in_batch=...)`` returns, with the two cuts."""
    lm = causal_lm(model)
    prefix = shared_prefix_len(batch) if share_prefix else 0
    hidden = _hidden_states(lm, batch, prefix)
    return labelled_loss(lm, hidden, batch["labels"], num_items_in_batch)
