"""Prometheus series added to vLLM's ``/metrics`` (same default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_SESSIONS = Gauge(
    "vllm_exposst_active_sessions", "Simultaneous translation sessions open on this server"
)
READ_TO_WRITE = Histogram(
    "vllm_exposst_read_to_write_seconds",
    "Time from a chunk with new source to its first sampled target token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WORDS_WRITTEN = Counter("vllm_exposst_words_written", "Target words written by sessions")
SESSIONS_REJECTED = Counter(
    "vllm_exposst_sessions_rejected", "Sessions refused at admission (too many or no KV room)"
)


def observe_result(result) -> None:
    """Record a finished sentence's READ-to-WRITE latencies and written words."""
    for seconds in result.read_latencies:
        READ_TO_WRITE.observe(seconds)
    WORDS_WRITTEN.inc(len(result.delays))
