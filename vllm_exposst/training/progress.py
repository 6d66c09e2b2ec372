"""Progress and throughput of a training run, as ``transformers`` callbacks.

Throughput is counted three ways over the time spent in training steps only (dev
decoding and checkpoint writing are left out, so the numbers compare layouts and
machines fairly): pairs (examples), target tokens (the labelled positions: target
words and the stop token, plus lookahead labels) and all non-padding tokens (the
trainer's ``num_input_tokens_seen``: prompt, source and target).
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


class ThroughputMeter(TrainerCallback):
    """Pairs, target tokens and all tokens per second, evaluation and saving excluded."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0  # non-padding tokens
        self.pairs = 0
        self.target_tokens = 0  # labelled positions
        self._start_tokens = 0
        self._last = time.perf_counter()

    def count_batch(self, rows: int, labels: int) -> None:
        """One training batch seen (called by the trainer's loss)."""
        self.pairs += rows
        self.target_tokens += labels

    def _per_second(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate(self) -> float:
        """Non-padding tokens per second."""
        return self._per_second(self.tokens)

    @property
    def pairs_rate(self) -> float:
        return self._per_second(self.pairs)

    @property
    def target_rate(self) -> float:
        """Target (labelled) tokens per second."""
        return self._per_second(self.target_tokens)

    def rates(self) -> dict[str, float]:
        """What the log and the record report, named by what they divide."""
        return {
            "pairs_per_second": round(self.pairs_rate, 3),
            "target_tokens_per_second": round(self.target_rate, 1),
            "tokens_per_second": round(self.rate, 1),
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start_tokens = state.num_input_tokens_seen
        self._last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.seconds += now - self._last
        self.tokens = state.num_input_tokens_seen - self._start_tokens
        self._last = now

    def _pause(self, *args: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    on_evaluate = on_save = _pause

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if any(key.startswith("eval_") for key in logs or {}):
            self._pause()  # dev decoding ends with a log of its scores


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps showing the last logged loss and tokens/s."""

    def __init__(self, meter: ThroughputMeter, enabled: bool = True) -> None:
        self.meter, self.enabled = meter, enabled
        self.bar: Any = None
        self.loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            postfix = {
                "pairs/s": f"{self.meter.pairs_rate:.2f}",
                "tgt tok/s": f"{self.meter.target_rate:.0f}",
            }
            if self.loss is not None:
                postfix["loss"] = f"{self.loss:.3f}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
            if not self.enabled:  # plain lines for log files (runs in the background)
                print(
                    f"step {state.global_step}/{state.max_steps} loss={self.loss:.4f} "
                    f"pairs/s={self.meter.pairs_rate:.2f} "
                    f"target_tok/s={self.meter.target_rate:.0f} tok/s={self.meter.rate:.0f}",
                    flush=True,
                )
        shown = {k: v for k, v in logs.items() if k.startswith("eval_")}
        if shown:
            text = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
            )
            write = self.bar.write if self.bar is not None else print
            write(f"step {state.global_step}: {text}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TimeLimit(TrainerCallback):
    """Stops training after ``minutes`` of wall-clock time; the run then saves as usual.

    For a lent machine with a hard time limit: the adapter of the steps done is kept
    (``exposst.json`` records the steps and that the limit stopped the run).
    """

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.start = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True
