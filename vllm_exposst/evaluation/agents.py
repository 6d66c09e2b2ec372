"""SimulEval agents: ExPosST sessions as a SimulEval ``TextToTextAgent``.

:class:`ExposstAgent` runs sessions in-process on a :class:`~vllm_exposst.engine.SimulEngine`.

SimulEval 1.1.4 sends one more source word on every call of the agent, whether it
answered READ or WRITE before, and records for each written word the number of
words sent so far.  So on each call the agent pushes the new word into the live
session, collects everything the session writes until it waits for the next word
(or ends), and returns it as one WRITE (SimulEval splits it into words, all with
this delay), or a READ if the session wrote nothing.  The delays SimulEval records
are then exactly the session's own.

One thing SimulEval cannot take: a word that goes on after a READ (the model may
continue ``Mann`` with ``,`` once it has read more).  SimulEval cannot extend a word
it has, so the agent writes the continuation as a word of its own; it keeps a
transcript marking such words (``continues``).  ``exposst-eval`` scores the text as
the session wrote it.

    simuleval --agent eval/agent.py --source test.en --target test.de --output out/se \\
        --model default --policy wait-3 --mode exposst --slot-len 8

The remote agent (a SimulEval agent that talks to a running ``vllm-exposst`` server
over WebSocket, docs/api.md) belongs next to this one, as ``RemoteExposstAgent`` in
this module, with its own entry file ``eval/remote_agent.py``; not written yet.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from simuleval.agents import AgentStates, ReadAction, TextToTextAgent, WriteAction

from ..engine import SESSION_MODES, Session, SessionConfig, TargetPiece
from .runtime import ADAPTER_NAME, LoopThread, engine_options, start_engine

logger = logging.getLogger(__name__)
Runner = Callable[[Coroutine[Any, Any, Any]], Any]


async def collect(session: Session) -> tuple[list[TargetPiece], bool]:
    """What the session writes until its policy waits for a word not pushed yet, or it ends.

    Returns the pieces and whether the session has ended (a failed session raises).
    """
    await session.wait_idle()
    return session.pending_pieces(), session.ended


@dataclass(frozen=True)
class WrittenWord:
    """One word as SimulEval received it."""

    text: str
    delay: int  # source words sent when it was written
    continues: bool = False  # the rest of the previous word (it went on after a READ)
    drop: int = 0  # characters of the previous word this one corrects (see WordSplitter)


class WordSplitter:
    """The words a batch of target tokens adds to the translation, as SimulEval takes them.

    The text is decoded from all target tokens so far (as the session decodes its
    result), not glued from piece texts.  When the last word already written goes
    on, the rest is a ``continues`` word.  A batch that ended inside a UTF-8
    character decoded it as U+FFFD; if the next batch completes it, the word changes
    instead of growing: the new ending is written with ``drop`` = the characters it
    replaces, so that :func:`merge_continuations` rebuilds the session's text.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""

    def add(self, token_ids: list[int], delay: int) -> list[WrittenWord]:
        """The words these tokens add, written at ``delay``."""
        before = self.text.split()
        self.ids += token_ids
        self.text = self.decode(self.ids)
        now = self.text.split()
        out: list[WrittenWord] = []
        if before and len(now) >= len(before) and now[len(before) - 1] != before[-1]:
            old, new = before[-1], now[len(before) - 1]
            kept = len(os.path.commonprefix([old, new]))
            out.append(WrittenWord(new[kept:], delay, continues=True, drop=len(old) - kept))
        out += [WrittenWord(word, delay) for word in now[len(before) :]]
        return out


class ExposstAgent(TextToTextAgent):
    """Simultaneous translation with an in-process SimulEngine session per sentence."""

    def __init__(
        self, args: Namespace | None = None, engine: Any = None, run: Runner | None = None
    ) -> None:
        self.session: Session | None = None
        self.transcripts: list[list[WrittenWord]] = []  # one per sentence, in order
        super().__init__(args)  # calls reset()
        self.config = session_config(args)
        if engine is None:
            self._loop = LoopThread()
            options = engine_options(
                args.model, args.adapter, max_num_seqs=4, max_model_len=args.max_model_len
            )
            engine = self._loop.run(start_engine(options))
            atexit.register(self._shutdown)
            run = self._loop.run
        self.engine, self.run = engine, run

    @classmethod
    def attach(cls, engine: Any, run: Runner, **options: Any) -> ExposstAgent:
        """An agent on an engine that already runs on the loop behind ``run`` (tests, scripts)."""
        parser = ArgumentParser()
        cls.add_args(parser)
        args = parser.parse_args([])
        for key, value in options.items():
            setattr(args, key, value)
        return cls(args, engine=engine, run=run)

    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--model", default="default", help="checkpoint folder, 'default' or tiny-llama"
        )
        parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder")
        parser.add_argument("--policy", default="wait-3", help="e.g. wait-3, read-2/write-1")
        parser.add_argument("--mode", default="exposst", choices=SESSION_MODES)
        parser.add_argument("--slot-len", type=int, default=8)
        parser.add_argument("--source-lang", default="English")
        parser.add_argument("--target-lang", default="German")
        parser.add_argument("--max-target-tokens", type=int, default=None)
        parser.add_argument("--max-model-len", type=int, default=2048)

    # -- SimulEval's interface ------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        if self.session is not None:
            self.run(self.session.close())
        self.session = None
        self.pushed = 0
        self.source_closed = False
        self.ended = False
        self.words: WordSplitter | None = None

    def policy(self, states: AgentStates | None = None) -> ReadAction | WriteAction:
        states = states or self.states
        if self.session is None:
            self.session = self.run(self.engine.open(SessionConfig(**vars(self.config))))
            self.words = WordSplitter(self.session.template.decode)
            self.transcripts.append([])
        self.run(self._push(states))
        pieces, self.ended = self.run(collect(self.session))
        batch = [token for piece in pieces for token in piece.token_ids]
        if self.ended:
            self._check(self.run(self.session.result()).text)
        written = self.words.add(batch, self.pushed) if batch else []
        self.transcripts[-1] += written
        if not written and not self.ended:
            return ReadAction()
        return WriteAction(" ".join(w.text for w in written), finished=self.ended)

    # -- helpers --------------------------------------------------------------------
    async def _push(self, states: AgentStates) -> None:
        for word in states.source[self.pushed :]:
            await self.session.push(word + " ")
        self.pushed = len(states.source)
        if states.source_finished and not self.source_closed:
            await self.session.finish()
            self.source_closed = True

    def _check(self, final_text: str) -> None:
        if final_text != self.words.text:
            logger.warning(
                "session text %r differs from its pieces %r", final_text, self.words.text
            )

    def _shutdown(self) -> None:
        """At exit: close the engine on its own loop, so its output task ends quietly."""

        async def stop() -> None:
            if self.session is not None:
                await self.session.close()
            self.engine.shutdown()

        with contextlib.suppress(Exception):
            self.run(stop(), 60)
        self.engine = None
        self._loop.close()


def session_config(args: Namespace) -> SessionConfig:
    """The session settings an agent's options ask for (checked now, not per sentence)."""
    config = SessionConfig(
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        policy=args.policy,
        slot_len=args.slot_len,
        mode=args.mode,
        lora=ADAPTER_NAME if args.adapter else None,
        max_target_tokens=args.max_target_tokens,
    )
    config.validate()
    return config


def merge_continuations(words: list[WrittenWord]) -> list[tuple[str, int]]:
    """The session's own words and delays from what SimulEval got (continuations joined)."""
    out: list[tuple[str, int]] = []
    for word in words:
        if word.continues and out:
            text, delay = out[-1]
            out[-1] = (text[: len(text) - word.drop] + word.text, delay)
        else:
            out.append((word.text, word.delay))
    return out


def simuleval_args(argv: list[str]) -> Namespace:
    """SimulEval's own options (and the agent's) parsed from ``argv``.

    SimulEval's parsers also read ``sys.argv``, so it is set to ``argv`` meanwhile.
    """
    from simuleval import options

    saved = sys.argv
    sys.argv = ["simuleval", *argv]
    try:
        parser = options.general_parser()
        options.add_evaluator_args(parser)
        options.add_scorer_args(parser, argv)
        options.add_dataloader_args(parser, argv)
        ExposstAgent.add_args(parser)
        return parser.parse_args(argv)
    finally:
        sys.argv = saved


def evaluate_agent(agent: ExposstAgent, argv: list[str]) -> Any:
    """Run SimulEval's sentence-level evaluator on ``agent`` in this process.

    ``argv`` are SimulEval options (``--source``, ``--target``, ``--output``, ...).
    Returns the evaluator (its ``instances`` and ``results``).
    """
    from simuleval.evaluator import build_evaluator

    args = simuleval_args(argv)
    args.source_type, args.target_type = agent.source_type, agent.target_type  # as its CLI does
    evaluator = build_evaluator(args)
    evaluator(agent)
    return evaluator
