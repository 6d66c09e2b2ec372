"""ExPosST's scheduler: vLLM's V1 scheduler plus what simultaneous sessions need.

Sessions are vLLM streaming-input requests whose ``extra_args`` carry an ``exposst``
entry.  On top of the base scheduler this class

* ends a WRITE turn at a word boundary: a sampled token that starts a new word (from
  the ``word_stop_after``-th output token of the turn on) stops the turn, so that
  token is the lookahead vLLM drops at the end of a streaming turn;
* keeps room in each step for sessions that just received source;
* counts, per session, the tokens it really computed (recomputation included) and
  exposes them with the block counts through :meth:`exposst_stats`.

It subclasses :class:`~vllm.v1.core.sched.scheduler.Scheduler`, the class vLLM
0.32 uses where async scheduling is off (the CPU platform turns it off).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from .options import ExposstOptions
from .positions import exposst_args
from .prompts import word_start_table
from .switch import check_vllm_version

logger = logging.getLogger(__name__)
FINISHED_STATS_KEPT = 4096


def external_id(request_id: str) -> str:
    """AsyncLLM appends ``-<8 hex>`` to the caller's request id."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


class ExposstScheduler(Scheduler):
    """Scheduler for engines serving ExPosST sessions (and ordinary requests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_vllm_version()
        super().__init__(*args, **kwargs)
        # fail at start-up, with a clear message, on bad --additional-config values
        self.options = ExposstOptions.from_additional_config(self.vllm_config.additional_config)
        self._word_start: list[bool] | None = None
        self.session_tokens: dict[str, int] = {}
        self.finished_tokens: OrderedDict[str, int] = OrderedDict()
        self.total_blocks = self.kv_cache_manager.block_pool.num_gpu_blocks - 1

    # -- word-boundary stop ---------------------------------------------------
    def _word_start_table(self) -> list[bool]:
        if self._word_start is None:
            from transformers import AutoTokenizer

            config = self.vllm_config.model_config
            tokenizer = AutoTokenizer.from_pretrained(
                config.tokenizer, revision=config.tokenizer_revision
            )
            self._word_start = word_start_table(tokenizer)
        return self._word_start

    def _update_request_with_output(self, request, new_token_ids, *args, **kwargs):
        new_token_ids, stopped = super()._update_request_with_output(
            request, new_token_ids, *args, **kwargs
        )
        args = exposst_args(request.sampling_params)
        if stopped or not args or not new_token_ids or "word_stop_after" not in args:
            return new_token_ids, stopped
        table = self._word_start_table()
        first_output = request.num_output_tokens - len(new_token_ids) + 1
        for offset, token in enumerate(new_token_ids):
            index = first_output + offset
            if index >= args["word_stop_after"] and token < len(table) and table[token]:
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = token
                surplus = len(new_token_ids) - offset - 1
                if surplus:
                    del request._output_token_ids[-surplus:]
                    del request._all_token_ids[-surplus:]
                    del new_token_ids[offset + 1 :]
                return new_token_ids, True
        return new_token_ids, False

    # -- accounting and priority for sessions with new source -----------------
    def _waiting_session_tokens(self) -> int:
        """New tokens of sessions that hold KV blocks and wait to be scheduled."""
        return sum(
            r.num_tokens - r.num_computed_tokens
            for r in self.kv_holding_waiting
            if exposst_args(r.sampling_params) is not None
        )

    def schedule(self, *args: Any, **kwargs: Any):
        """vLLM's step, with room kept for sessions that just received source.

        vLLM schedules running requests first; a long ordinary prefill could take
        the whole token budget.  While sessions wait with new tokens, running
        prefills are capped (``long_prefill_token_threshold``) so that the session
        chunks fit in the same step.  vLLM itself already drains KV-holding waiting
        requests (paused sessions) before new ones.
        """
        config = self.scheduler_config
        saved = config.long_prefill_token_threshold
        reserve = self._waiting_session_tokens()
        if reserve:
            cap = max(1, self.max_num_scheduled_tokens - reserve)
            config.long_prefill_token_threshold = min(saved, cap) if saved else cap
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            config.long_prefill_token_threshold = saved
        for req_id, count in output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is not None and exposst_args(request.sampling_params) is not None:
                key = external_id(req_id)
                self.session_tokens[key] = self.session_tokens.get(key, 0) + count
        return output

    def _free_request(self, request, *args: Any, **kwargs: Any):
        key = external_id(request.request_id)
        if key in self.session_tokens:
            self.finished_tokens[key] = self.session_tokens.pop(key)
            while len(self.finished_tokens) > FINISHED_STATS_KEPT:
                self.finished_tokens.popitem(last=False)
        return super()._free_request(request, *args, **kwargs)

    def exposst_stats(self) -> dict:
        """Counts for metrics and tests: sessions, blocks, tokens computed per session."""
        sessions = [
            r for r in self.requests.values() if exposst_args(r.sampling_params) is not None
        ]
        waiting = sum(r.status == RequestStatus.WAITING_FOR_STREAMING_REQ for r in sessions)
        return {
            "time": time.time(),
            "active_sessions": len(sessions) - waiting,
            "waiting_sessions": waiting,
            "running_requests": len(self.running),
            "waiting_requests": len(self.waiting) + len(self.kv_holding_waiting),
            "total_blocks": self.total_blocks,
            "free_blocks": self.kv_cache_manager.block_pool.get_num_free_blocks(),
            "tokens_computed": {**self.finished_tokens, **self.session_tokens},
        }
