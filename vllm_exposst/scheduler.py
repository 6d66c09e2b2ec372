"""ExPosST's scheduler: vLLM's V1 scheduler plus what simultaneous sessions need.

Sessions are vLLM streaming-input requests whose ``extra_args`` carry an ``exposst``
entry.  On top of the base scheduler this class

* ends a WRITE turn at a word boundary: a turn asks for ``words`` target words, and
  the sampled token that begins the next one (:func:`~vllm_exposst.prompts.word_starts`,
  kept incrementally per turn) stops it, so that token is the lookahead vLLM drops at
  the end of a streaming turn;
* schedules a session's next chunk in the step after it arrives (READ priority):
  running prefills make room for it;
* counts, per session, the tokens it really computed (recomputation included) and
  exposes them with the block counts through :meth:`exposst_stats`.

It subclasses :class:`~vllm.v1.core.sched.scheduler.Scheduler`, the class vLLM
0.32 uses where async scheduling is off (the CPU platform turns it off).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from .options import ExposstOptions
from .positions import EXTRA_KEY, exposst_args
from .prompts import WordStarts, word_start_table
from .queued_read import QUEUED_KEY, QueuedRead
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
        # per session in a WRITE turn: (the turn's sampling params, its word starts so far)
        self._turn_words: dict[str, tuple[Any, WordStarts]] = {}
        self.session_tokens: dict[str, int] = {}
        self.finished_tokens: OrderedDict[str, int] = OrderedDict()
        self.total_blocks = self.kv_cache_manager.block_pool.num_gpu_blocks - 1
        # READ priority, measured: a chunk that arrives between steps should be
        # scheduled by the next schedule() call; ``chunk_arrived`` holds the call count
        # at arrival, ``chunk_counts`` how many chunks ran, were late, and by how much
        self.schedule_calls = 0
        self.chunk_arrived: dict[str, int] = {}
        self.chunk_counts = {"chunks_scheduled": 0, "chunks_delayed": 0, "chunk_wait_steps": 0}
        self.session_preemptions = 0  # session requests vLLM preempted (KV cache full)
        self.queued_counts = {"queued_reads": 0, "queued_reads_dropped": 0}
        # seconds spent in schedule() and update_from_output(), summed (profile_step.py)
        self.host_seconds = {"schedule": 0.0, "update_from_output": 0.0}

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
        if stopped or not args or not new_token_ids or "words" not in args:
            return new_token_ids, stopped
        outputs = request.output_token_ids  # this turn's (vLLM clears them per chunk)
        starts = self._turn_word_starts(request, args).extend(outputs)
        if len(starts) < args["words"]:
            return new_token_ids, False
        surplus = len(outputs) - starts[args["words"] - 1] - 1  # tokens after the lookahead
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = outputs[-surplus - 1]
        if surplus:
            del request._output_token_ids[-surplus:]
            del request._all_token_ids[-surplus:]
            del new_token_ids[-surplus:]
        return new_token_ids, True

    def _turn_word_starts(self, request, args: dict) -> WordStarts:
        """The word starts of the request's current turn, scanned only where new.

        A turn is one chunk's sampling params; a new chunk (or outputs shorter than
        those scanned, which a turn never has) starts a fresh scan."""
        params = request.sampling_params
        turn = self._turn_words.get(request.request_id)
        if turn is None or turn[0] is not params or turn[1].seen > len(request.output_token_ids):
            words = WordStarts(self._word_start_table(), args["max_word_tokens"], args["carried"])
            turn = self._turn_words[request.request_id] = (params, words)
        return turn[1]

    # -- accounting and priority for sessions with new source -----------------
    @staticmethod
    def _new_tokens(request) -> int:
        return (
            request.num_tokens_with_spec
            + request.num_output_placeholders
            - request.num_computed_tokens
        )

    def _waiting_chunks(self) -> list[int]:
        """New-token counts of session chunks that hold KV blocks and wait to run."""
        return [
            self._new_tokens(r)
            for r in self.kv_holding_waiting
            if r.status != RequestStatus.WAITING_FOR_STREAMING_REQ
            and exposst_args(r.sampling_params) is not None
        ]

    def schedule(self, *args: Any, **kwargs: Any):
        """vLLM's step, with room kept for sessions that just received source (READ priority).

        vLLM schedules running requests first, so running prefills (long ordinary
        prompts, sessions opening) could take the whole token budget while a session's
        next chunk waits.  While chunks wait, running prefills share only the budget
        left after the running decodes and every waiting chunk (each capped to it,
        taken in vLLM's order); those that do not fit sit the step out (vLLM's own
        per-request skip, ``next_decode_eligible_step``).  If the room left is
        smaller than a chunk, no prefill runs.  vLLM already takes KV-holding waiting
        requests (sessions) before new ones.  Prefills only lose steps to sessions
        with new source.
        """
        with self._timed("schedule"):
            return self._schedule(*args, **kwargs)

    def update_from_output(self, *args: Any, **kwargs: Any):
        """vLLM's, timed (the scheduler's share of a step: ``exposst_stats``)."""
        with self._timed("update_from_output"):
            return super().update_from_output(*args, **kwargs)

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        """Add the block's seconds to ``host_seconds[part]``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.host_seconds[part] += time.perf_counter() - began

    def _schedule(self, *args: Any, **kwargs: Any):
        self.schedule_calls += 1
        config = self.scheduler_config
        saved = config.long_prefill_token_threshold
        held: list[tuple[Any, int]] = []
        chunks = self._waiting_chunks()
        if chunks:
            prefills = [r for r in self.running if self._new_tokens(r) > 1]
            decodes = len(self.running) - len(prefills)
            free = self.max_num_scheduled_tokens - sum(chunks) - decodes
            if free >= max(chunks):  # a smaller cap would split the chunks themselves
                config.long_prefill_token_threshold = min(saved, free) if saved else free
            else:
                free = 0
            for request in prefills:  # in vLLM's order; those that do not fit sit out
                need = min(self._new_tokens(request), free)  # 0 once the room is used
                if need:
                    free -= need
                    continue
                held.append((request, request.next_decode_eligible_step))
                request.next_decode_eligible_step = self.current_step + 2
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            config.long_prefill_token_threshold = saved
            for request, step in held:
                request.next_decode_eligible_step = step
        for req_id, count in output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is not None and exposst_args(request.sampling_params) is not None:
                key = external_id(req_id)
                self.session_tokens[key] = self.session_tokens.get(key, 0) + count
            arrived = self.chunk_arrived.pop(req_id, None)
            if arrived is not None:
                waited = self.schedule_calls - arrived - 1
                self.chunk_counts["chunks_scheduled"] += 1
                self.chunk_counts["chunks_delayed"] += waited > 0
                self.chunk_counts["chunk_wait_steps"] += waited
        return output

    def _update_request_as_session(self, session, update) -> None:
        """A session's next chunk is in: note when, to measure how soon it runs.

        A queued READ (:mod:`vllm_exposst.queued_read`) is completed here, as its
        turn before ends, or dropped if that turn did not end as planned (the session
        then waits for the decoder's own next chunk)."""
        args = exposst_args(update.sampling_params)
        queued = args.get(QUEUED_KEY) if args else None
        if queued is not None and not self._complete_queued_read(session, update, queued):
            self.queued_counts["queued_reads_dropped"] += 1
            if session.status != RequestStatus.WAITING_FOR_STREAMING_REQ:
                session.status = RequestStatus.WAITING_FOR_STREAMING_REQ
                self.num_waiting_for_streaming_input += 1
            return
        super()._update_request_as_session(session, update)
        self._turn_words.pop(session.request_id, None)  # its outputs start again
        if exposst_args(session.sampling_params) is not None:
            self.chunk_arrived[session.request_id] = self.schedule_calls

    def _complete_queued_read(self, session, update, args: dict) -> bool:
        """Fill in a queued READ's refeed copy, positions and budget from the turn that
        just ended; False if that turn ended otherwise than planned (drop the chunk)."""
        computed = session.num_computed_tokens  # the turn's lookahead lies just past it
        tail = session._all_token_ids[computed : computed + 1]
        try:
            queued = QueuedRead.from_args(args)
            if not queued.holds(tail[0] if tail else None):
                return False
            kept = computed - session.num_prompt_tokens
            done = queued.complete(kept, session._all_token_ids[computed - 1], computed)
        except Exception:  # a malformed entry or the position limit: the decoder's own
            logger.exception("queued READ of %s dropped", session.request_id)  # path decides
            return False
        update.prompt_token_ids = [*update.prompt_token_ids, *done.extra_tokens]
        params = update.sampling_params
        if done.positions is not None:
            params.extra_args[EXTRA_KEY].update(done.positions)
        if done.max_tokens is not None:
            update.max_tokens = params.max_tokens = done.max_tokens
        self.queued_counts["queued_reads"] += 1
        return True

    def _preempt_request(self, request, *args: Any, **kwargs: Any) -> None:
        if exposst_args(request.sampling_params) is not None:
            self.session_preemptions += 1
        super()._preempt_request(request, *args, **kwargs)

    def _free_request(self, request, *args: Any, **kwargs: Any):
        key = external_id(request.request_id)
        if key in self.session_tokens:
            self.finished_tokens[key] = self.session_tokens.pop(key)
            while len(self.finished_tokens) > FINISHED_STATS_KEPT:
                self.finished_tokens.popitem(last=False)
        self.chunk_arrived.pop(request.request_id, None)
        self._turn_words.pop(request.request_id, None)
        return super()._free_request(request, *args, **kwargs)

    def exposst_stats(self, request_ids: list[str] | None = None) -> dict:
        """Counts for metrics and tests: sessions, blocks, chunk waits, tokens per session.

        ``chunks_scheduled`` counts a session's continuation chunks (new source or the
        next word) that have run; ``chunks_delayed`` those not scheduled by the first
        step after they arrived, ``chunk_wait_steps`` the steps they waited in all.
        ``request_ids`` limits ``tokens_computed`` to those requests: a sentence's own
        count costs the same after thousands of sentences as after one.
        """
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
            **self.chunk_counts,
            **self.queued_counts,
            "session_preemptions": self.session_preemptions,
            "schedule_calls": self.schedule_calls,
            "scheduler_seconds": dict(self.host_seconds),
            "tokens_computed": self._tokens_computed(request_ids),
        }

    def _tokens_computed(self, request_ids: list[str] | None) -> dict[str, int]:
        if request_ids is None:
            return {**self.finished_tokens, **self.session_tokens}
        counts = {}
        for key in request_ids:
            count = self.session_tokens.get(key, self.finished_tokens.get(key))
            if count is not None:
                counts[key] = count
        return counts
