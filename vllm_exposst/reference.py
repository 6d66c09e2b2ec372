"""Simultaneous greedy decoding with transformers: the oracle for the vLLM path.

Three cache modes (design section 1):

* ``exposst``: the KV cache is kept across READ/WRITE turns; positions come from
  :class:`~vllm_exposst.layout.ExposstAllocator`;
* ``shift``: the cache is kept; positions are contiguous in event order;
* ``recompute``: after every READ the offline prompt is restored: the cache is cut
  back to the end of the source and the new source, header and target so far are
  encoded again.

WRITE semantics (design section 3): a WRITE emits one target unit; for words,
tokens are generated until the next token starts a new word, is the stop token or
the word reaches ``max_word_tokens``.  That lookahead token is not fed; if the
policy WRITEs again it becomes the next word's first token, if it READs it is
dropped and predicted again after the READ.  A stop token before the source is
complete means READ.  The first target token is never the stop token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .defaults import (
    DECODE_MODES,
    DEFAULT_MODE,
    DEFAULT_REFEED,
    DEFAULT_SLOT_LEN,
    MAX_WORD_TOKENS,
    limit_reached,
    target_token_limit,
)
from .layout import READ, REFEED, WRITE, Event, make_allocator
from .policies import Policy, PolicyState, parse_policy
from .prompts import PromptTemplate, units, word_delays


@dataclass
class DecodeResult:
    """A translation with its delays and what it cost."""

    text: str
    delays: list[int]  # per whitespace word of ``text``: source words read when it was written
    target_ids: list[int]
    tokens_computed: int  # tokens actually run through the model
    logprobs: list[float]  # log-probability of each target token when it was chosen
    fed_ids: list[int] = field(repr=False)  # every token given to the model, in order
    fed_positions: list[int] = field(repr=False)
    events: list[Event] = field(repr=False)  # token-level events after the prefix
    step_logprobs: list[torch.Tensor] = field(default_factory=list, repr=False)


class ReferenceDecoder:
    """Greedy simultaneous decoding of one sentence at a time."""

    def __init__(
        self,
        model: Any,
        template: PromptTemplate,
        *,
        mode: str = DEFAULT_MODE,
        slot_len: int = DEFAULT_SLOT_LEN,
        max_word_tokens: int = MAX_WORD_TOKENS,
        max_target_tokens: int | None = None,
        max_position: int | None = None,
        record_logprobs: bool = False,
        refeed: bool = DEFAULT_REFEED,
    ) -> None:
        if mode not in DECODE_MODES:
            raise ValueError(f"unknown decoding mode {mode!r}; expected one of {DECODE_MODES}")
        self.model, self.template, self.mode = model, template, mode
        self.slot_len = slot_len
        self.max_word_tokens, self.max_target_tokens = max_word_tokens, max_target_tokens
        self.max_position = max_position or getattr(model.config, "max_position_embeddings", None)
        self.record_logprobs = record_logprobs
        self.refeed = refeed and mode == "exposst"

    def target_limit(self, source_tokens: int) -> int:
        """Most target tokens for a source (:func:`~vllm_exposst.defaults.target_token_limit`)."""
        return target_token_limit(source_tokens, self.max_target_tokens)

    def translate(
        self, source: str | list[str], policy: Policy | str, *, force_target: str | None = None
    ) -> DecodeResult:
        """Translate ``source`` under ``policy``; ``force_target`` teacher-forces the output."""
        run = _Run(self, parse_policy(policy), source, force_target)
        return run.decode()


class _Run:
    """State of one sentence: cache, allocator, queue of tokens not yet fed."""

    def __init__(
        self, decoder: ReferenceDecoder, policy: Policy, source: str | list[str], force: str | None
    ) -> None:
        self.d, self.policy, t = decoder, policy, decoder.template
        self.source_units = units(t.words_ids(source), policy.unit)
        self.unit_word = self._unit_to_word(t.words_ids(source), policy.unit)
        self.forced = [tok for w in t.words_ids(force) for tok in w] if force is not None else None
        self.cache = self._new_cache()
        self.allocator = make_allocator(
            "exposst" if decoder.mode == "exposst" else "shift",
            prefix_len=t.prefix_len,
            header_len=t.header_len,
            slot_len=decoder.slot_len,
            max_position=decoder.max_position,
            refeed=decoder.refeed,
        )
        self.queue_ids: list[int] = list(t.prefix_ids)
        self.queue_pos: list[int] = self.allocator.prefix()
        self.fed_ids: list[int] = []
        self.fed_pos: list[int] = []
        self.logits: torch.Tensor | None = None  # after the last fed token
        self.header_done = False
        self.source_ids: list[int] = []
        self.target_ids: list[int] = []
        self.logprobs: list[float] = []
        self.step_logprobs: list[torch.Tensor] = []  # full vectors, when recorded
        self.events: list[Event] = []

    @staticmethod
    def _unit_to_word(words: list[list[int]], unit: str) -> list[int]:
        return [i for i, w in enumerate(words) for _ in (w if unit == "token" else [w])]

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.d.model.config)

    # -- feeding the model -------------------------------------------------
    def _enqueue(self, ids: list[int], positions: list[int]) -> None:
        self.queue_ids += ids
        self.queue_pos += positions
        self.logits = None

    @torch.no_grad()
    def _flush(self) -> torch.Tensor:
        if self.queue_ids:
            device = self.d.model.device
            out = self.d.model(
                input_ids=torch.tensor([self.queue_ids], device=device),
                position_ids=torch.tensor([self.queue_pos], device=device),
                past_key_values=self.cache,
                use_cache=True,
            )
            self.logits = out.logits[0, -1].float().cpu()
            self.fed_ids += self.queue_ids
            self.fed_pos += self.queue_pos
            self.queue_ids, self.queue_pos = [], []
        assert self.logits is not None
        return self.logits

    def _peek(self, allow_stop: bool = True) -> tuple[int, float]:
        """The next token (greedy or forced) and its log-probability."""
        if self.allocator.refeed_due:  # the refeed rule: predict from a copy
            self._enqueue([self.target_ids[-1]], self.allocator.refeed())
            self.events.append((REFEED, 1))
        logprobs = torch.log_softmax(self._flush(), dim=-1)
        if self.forced is not None:
            done = len(self.target_ids)
            token = self.forced[done] if done < len(self.forced) else self.d.template.stop_id
        else:
            scores = logprobs.clone()
            if not allow_stop:
                scores[self.d.template.stop_id] = -float("inf")
            token = int(torch.argmax(scores))
        return token, float(logprobs[token])

    # -- events --------------------------------------------------------------
    def _read(self, index: int) -> None:
        unit = self.source_units[index]
        self.events.append((READ, len(unit)))
        if self.d.mode == "recompute":
            self._recompute_with(unit)
        else:
            self._enqueue(unit, self.allocator.read(len(unit)))
        self.source_ids += unit

    def _recompute_with(self, unit: list[int]) -> None:
        """Restore the offline prompt: cut the cache after the source, re-encode the rest."""
        t = self.d.template
        kept = t.prefix_len + len(self.source_ids)
        surplus = self.cache.get_seq_length() - kept
        if surplus > 0:
            self.cache.crop(-surplus)
        tail = unit + (list(t.header_ids) + self.target_ids if self.header_done else [])
        self._enqueue(tail, list(range(kept, kept + len(tail))))

    def _write_position(self) -> list[int]:
        """Positions for the next target token, preceded by the header's the first time."""
        if self.d.mode != "recompute":
            return self.allocator.write(1)
        t = self.d.template
        base = t.prefix_len + len(self.source_ids)
        header = [] if self.header_done else list(range(base, base + t.header_len))
        return header + [base + t.header_len + len(self.target_ids)]

    def _write_unit(self) -> list[int]:
        tokens: list[int] = []
        t = self.d.template
        while len(self.target_ids) < self.d.target_limit(len(self.source_ids)):
            if not self.header_done:
                positions = self._write_position()
                self._enqueue(list(t.header_ids), positions[:-1])
                self.header_done = True
                token, logprob = self._peek(allow_stop=False)
            else:
                token, logprob = self._peek()
                ends_word = self.policy.unit == "token" or (
                    token == t.stop_id
                    or t.word_start[token]
                    or len(tokens) >= self.d.max_word_tokens
                )
                if tokens and ends_word:
                    break
                positions = self._write_position()
            tokens.append(token)
            self.target_ids.append(token)
            self.logprobs.append(logprob)
            if self.d.record_logprobs:
                self.step_logprobs.append(torch.log_softmax(self._flush(), dim=-1))
            self._enqueue([token], positions[-1:])
            if self.policy.unit == "token":
                break
        self.events.append((WRITE, len(tokens)))
        return tokens

    def _finished(self, action: str, source_done: bool) -> tuple[bool, str]:
        """Is the sentence over, and what does the decision really become?"""
        limit = limit_reached(
            len(self.target_ids), len(self.source_ids), source_done, self.d.max_target_tokens
        )
        if limit != "go":  # at the limit: read on while there is source left
            return limit == "stop", READ
        if action == WRITE and self.header_done and self._peek()[0] == self.d.template.stop_id:
            if source_done and self.d.record_logprobs:
                self.step_logprobs.append(torch.log_softmax(self._flush(), dim=-1))
            return source_done, READ
        return False, action

    def decode(self) -> DecodeResult:
        groups: list[tuple[list[int], int]] = []
        read = written = 0
        while True:
            source_done = read == len(self.source_units)
            confidence = None
            if self.policy.needs_confidence and self.header_done and not source_done:
                confidence = math.exp(self._peek()[1])
            action = self.policy.decide(PolicyState(read, written, source_done, confidence))
            finished, action = self._finished(action, source_done)
            if finished:
                break
            if action == READ:
                self._read(read)
                read += 1
                continue
            tokens = self._write_unit()
            written += 1
            groups.append((tokens, self.unit_word[read - 1] + 1 if read else 0))
        t = self.d.template
        return DecodeResult(
            text=t.decode(self.target_ids),
            delays=word_delays(t, groups),
            target_ids=self.target_ids,
            tokens_computed=len(self.fed_ids),
            logprobs=self.logprobs,
            fed_ids=self.fed_ids + self.queue_ids,
            fed_positions=self.fed_pos + self.queue_pos,
            events=self.events,
            step_logprobs=self.step_logprobs,
        )
