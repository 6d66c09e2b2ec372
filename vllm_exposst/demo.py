"""``make demo``: English speech arriving word by word, translated live into German.

Several sessions run at once on one engine with ExPosST's scheduler; the terminal
shows what the speakers said so far and the growing translations.  Then BLEU and
chrF against the references shipped next to the sentences, LAAL per sentence
(SimulEval's scorer), and the tokens the engine computed against the minimum, with
the recompute baseline on the same sentences for comparison.

``DEMO_MODEL=tiny-llama make demo`` (or ``--model``) is the reduced form for CI.  The
default model serves the repository's ExPosST adapter, ``adapters/exposst-smollm2/``
(trained as docs/results.md says); ``--base`` runs the base model.  A merged
checkpoint (``exposst-merge``) runs with ``--model OUT``: its ``exposst.json`` sets the
session defaults.  The dtype is the platform's (float32 on the CPU) unless ``--dtype``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .shipped import add_weight_flags, chosen_adapter

DEFAULT_RATE = 2.5  # words per second, an ordinary speaking rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=os.environ.get("DEMO_MODEL", "default"),
        help="checkpoint folder, 'default' or tiny-llama (env DEMO_MODEL)",
    )
    add_weight_flags(parser)
    parser.add_argument("--sentences", type=Path, default=Path("examples/sentences.en"))
    parser.add_argument("--references", type=Path, default=Path("examples/sentences.de"))
    parser.add_argument("--policy", default=None, help="default: the adapter's, else wait-3")
    parser.add_argument("--slot-len", type=int, default=None)
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("DEMO_RATE", DEFAULT_RATE)),
        help="speaking rate in words per second (env DEMO_RATE)",
    )
    parser.add_argument("--stagger", type=float, default=0.7, help="seconds between speakers")
    parser.add_argument(
        "--dtype", default="auto", help="model dtype; auto: the platform's (float32 on the CPU)"
    )
    return parser.parse_args(argv)


def session_config(engine: Any, args: argparse.Namespace, adapter: Path | None) -> Any:
    """The engine's defaults, then the adapter's ``exposst.json``, then the flags."""
    from .evaluation.runtime import ADAPTER_NAME

    lora = ADAPTER_NAME if adapter is not None else None
    return engine.session_config(lora=lora, policy=args.policy, slot_len=args.slot_len)


@dataclass
class Speaker:
    """One sentence being spoken and translated: what the live view shows."""

    words: list[str]
    heard: int = 0
    ids: list[int] = field(default_factory=list)
    text: str = ""
    spoken_at: float | None = None  # when the last word arrived
    done_at: float | None = None
    result: Any = None


def render(speakers: list[Speaker]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="live: English speech -> German", expand=True)
    table.add_column("#", width=2)
    table.add_column("speaker (English)", ratio=1)
    table.add_column("translation (German)", ratio=1)
    table.add_column("status", width=22)
    for i, s in enumerate(speakers, 1):
        source = Text(" ".join(s.words[: s.heard]), style="bold")
        if s.heard < len(s.words):
            source.append((" " if s.heard else "") + " ".join(s.words[s.heard :]), style="dim")
        if s.done_at is not None:
            status = f"done, {max(0.0, s.done_at - s.spoken_at):.1f} s after speaker"
        elif s.heard:
            status = "listening" if s.spoken_at is None else "finishing"
        else:
            status = "waiting"
        table.add_row(str(i), source, s.text, status)
    return table


async def converse(engine: Any, speaker: Speaker, config: Any, rate: float, delay: float) -> None:
    """Open a session after ``delay`` s, speak into it at ``rate``, read what it writes."""
    await asyncio.sleep(delay)
    session = await engine.open(replace(config))

    async def speak() -> None:
        for i, word in enumerate(speaker.words):
            await session.push(word + " ")
            speaker.heard = i + 1
            if i + 1 < len(speaker.words):
                await asyncio.sleep(1 / rate)
        await session.finish()
        speaker.spoken_at = time.monotonic()

    async def listen() -> None:
        async for piece in session:
            speaker.ids += piece.token_ids
            speaker.text = session.template.decode(speaker.ids)

    try:
        await asyncio.gather(speak(), listen())
        speaker.result = await session.result()
        speaker.done_at = time.monotonic()
    finally:
        await session.close()


async def live(engine: Any, speakers: list[Speaker], config: Any, args: argparse.Namespace):
    from rich.live import Live

    tasks = [
        asyncio.create_task(converse(engine, s, config, args.rate, i * args.stagger))
        for i, s in enumerate(speakers)
    ]
    with Live(render(speakers), refresh_per_second=10) as view:
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
            view.update(render(speakers))
        view.update(render(speakers))
    await asyncio.gather(*tasks)  # raise a session's error, if any


async def run(args: argparse.Namespace, sources: list[str]) -> dict[str, Any]:
    from rich.console import Console

    from .evaluation.runtime import engine_options, start_engine

    console = Console()
    adapter = args.adapter  # chosen in main()
    with console.status(f"preparing {args.model} and starting the engine (about 30 s)"):
        options = engine_options(
            args.model, adapter, max_num_seqs=max(8, 2 * len(sources)), dtype=args.dtype
        )
        engine = await start_engine(options)
    config = session_config(engine, args, adapter)
    console.print(
        f"model {args.model}{f' + adapter {adapter}' if adapter else ''} in "
        f"{engine.dtype}; policy "
        f"{config.policy}, slot {config.slot_len}, mode {config.mode}; speakers at "
        f"{args.rate:g} words/s"
    )
    try:
        speakers = [Speaker(s.split()) for s in sources]
        await live(engine, speakers, config, args)
        results = [s.result for s in speakers]
        computed = [await engine.tokens_computed(r.request_ids) for r in results]
        with console.status("the recompute baseline on the same sentences"):
            baseline = await asyncio.gather(
                *[engine.translate(s, config=replace(config, mode="recompute")) for s in sources]
            )
            baseline_computed = [await engine.tokens_computed(r.request_ids) for r in baseline]
        minimum = [r.tokens_minimum for r in results]
        return {
            "speakers": speakers,
            "results": results,
            "computed": computed,
            "minimum": minimum,
            "baseline_computed": baseline_computed,
        }
    finally:
        engine.shutdown()  # the core gets its grace (patch/teardown.py)


def report(sources: list[str], references: list[str], out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .evaluation.metrics import Hypothesis, latency_score, quality_scores, simuleval_instances

    results = out["results"]
    hyps = [
        Hypothesis(i, src, ref, r.text, list(r.delays), list(r.elapsed))
        for i, (src, ref, r) in enumerate(zip(sources, references, results, strict=True))
    ]
    laal = [latency_score("LAAL", {0: simuleval_instances([h])[0]}) for h in hyps]
    table = Table(title="per sentence")
    for name in ("#", "translation", "reference", "LAAL", "computed", "minimum", "recompute"):
        table.add_column(name, justify="right" if name[0] in "#LcmR" else "left")
    rows = zip(hyps, laal, out["computed"], out["minimum"], out["baseline_computed"], strict=True)
    for i, (hyp, lag, comp, low, base) in enumerate(rows, 1):
        table.add_row(
            str(i), hyp.prediction, hyp.reference, f"{lag:.2f}", str(comp), str(low), str(base)
        )
    console = Console()
    console.print(table)
    quality = quality_scores([h.prediction for h in hyps], references)
    after = [max(0.0, s.done_at - s.spoken_at) for s in out["speakers"]]
    ratio = sum(out["computed"]) / sum(out["minimum"])
    base_ratio = sum(out["baseline_computed"]) / sum(out["minimum"])
    console.print(
        f"BLEU {quality['BLEU']:.1f}  chrF {quality['chrF']:.1f}  ({quality['bleu_signature']})\n"
        f"LAAL {statistics.mean(laal):.2f} source words (mean over sentences)\n"
        f"done after the speaker's last word: {', '.join(f'{a:.1f}' for a in after)} s\n"
        f"tokens computed: {sum(out['computed'])} for a minimum of {sum(out['minimum'])} "
        f"(x{ratio:.2f}); the recompute baseline computes {sum(out['baseline_computed'])} "
        f"(x{base_ratio:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    from .evaluation.runtime import quiet_optional_imports

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the live view readable
    quiet_optional_imports()  # simuleval's pydub warns that ffmpeg is missing (audio only)
    args = parse_args(argv)
    try:
        sources = [s.strip() for s in args.sentences.read_text().splitlines() if s.strip()]
        references = [s.strip() for s in args.references.read_text().splitlines() if s.strip()]
        args.adapter = chosen_adapter(args.model, args.adapter, args.base)
    except (OSError, ValueError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    if len(sources) != len(references) or not sources:
        print(
            f"demo: {args.sentences} and {args.references} must have the same lines",
            file=sys.stderr,
        )
        return 2
    out = asyncio.run(run(args, sources))
    gc.collect()
    report(sources, references, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
