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

    simuleval --agent eval/remote_agent.py --source test.en --target test.de \\
        --output out/se --server-url ws://127.0.0.1:8000 --policy wait-3

:class:`~vllm_exposst.evaluation.remote_agent.RemoteExposstAgent` does the same with a
running server, as a client of its WebSocket route.  Both share :class:`SessionAgent`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from simuleval.agents import AgentStates, ReadAction, TextToTextAgent, WriteAction

from ..defaults import DEFAULT_POLICY, DEFAULT_SLOT_LEN, MODES, SOURCE_LANG, TARGET_LANG
from ..engine import LoopThread, Session, SessionConfig, TargetPiece
from ..shipped import add_weight_flags, chosen_adapter
from .runtime import ADAPTER_NAME, engine_options, start_engine

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


class WordSplitter:
    """The words a piece of the translation adds, as SimulEval takes them.

    Pieces are the session's exact text (a piece never ends inside a UTF-8
    character: the session holds an unfinished one back), so the translation only
    grows.  When the last word already written goes on, the rest is a ``continues``
    word, which :func:`merge_continuations` joins back.
    """

    def __init__(self) -> None:
        self.text = ""

    def extend(self, added: str, delay: int) -> list[WrittenWord]:
        """The words that ``added`` (a piece's or a delta's text) adds, written at ``delay``."""
        if not added:
            return []
        before = self.text.split()
        self.text += added
        now = self.text.split()
        out: list[WrittenWord] = []
        if before and now[len(before) - 1] != before[-1]:  # the last word went on
            out.append(WrittenWord(now[len(before) - 1][len(before[-1]) :], delay, True))
        out += [WrittenWord(word, delay) for word in now[len(before) :]]
        return out


class SessionAgent(TextToTextAgent):
    """What both agents share: a session per sentence, one step per call of SimulEval.

    A step gives the session the words SimulEval sent since the last one (and the
    end of the source once it is complete), collects what the session writes until
    it waits for the next word or ends, and answers with it as one WRITE, or a READ.
    Subclasses say how a sentence starts (:meth:`start_sentence`), how a step runs
    (:meth:`step`) and how an unfinished sentence is given up (:meth:`drop_sentence`).
    """

    def __init__(self, args: Namespace | None = None) -> None:
        self.transcripts: list[list[WrittenWord]] = []  # one per sentence, in order
        super().__init__(args)  # calls reset()

    @classmethod
    def options(cls, **options: Any) -> Namespace:
        """The agent's default options, ``options`` replacing some (tests, scripts)."""
        parser = ArgumentParser()
        cls.add_args(parser)
        args = parser.parse_args([])
        for key, value in options.items():
            setattr(args, key, value)
        return args

    def reset(self) -> None:
        super().reset()
        if getattr(self, "words", None) is not None and not self.ended:
            self.drop_sentence()
        self.pushed = 0
        self.source_closed = False
        self.ended = False
        self.words: WordSplitter | None = None  # the sentence in progress

    def policy(self, states: AgentStates | None = None) -> ReadAction | WriteAction:
        states = states or self.states
        if self.words is None:
            self.words = self.start_sentence()
            self.transcripts.append([])
        new_words = list(states.source[self.pushed :])
        self.pushed = len(states.source)
        finish = states.source_finished and not self.source_closed
        self.source_closed = self.source_closed or finish
        written, self.ended = self.step(new_words, finish)
        self.transcripts[-1] += written
        if not written and not self.ended:
            return ReadAction()
        return WriteAction(" ".join(w.text for w in written), finished=self.ended)

    def start_sentence(self) -> WordSplitter:
        """Open a session for a new sentence; the splitter for its words."""
        raise NotImplementedError

    def step(self, new_words: list[str], finish: bool) -> tuple[list[WrittenWord], bool]:
        """Push ``new_words`` (then the end of the source if ``finish``); the words the
        session wrote until it waits for more source or ends, at delay ``self.pushed``,
        and whether it has ended."""
        raise NotImplementedError

    def drop_sentence(self) -> None:
        """Give up the sentence in progress (SimulEval moved on before its end)."""
        raise NotImplementedError


class ExposstAgent(SessionAgent):
    """Simultaneous translation with an in-process SimulEngine session per sentence."""

    def __init__(
        self, args: Namespace | None = None, engine: Any = None, run: Runner | None = None
    ) -> None:
        self.session: Session | None = None
        super().__init__(args)  # calls reset()
        if engine is None:  # its own engine: the shipped adapter unless told otherwise
            args.adapter = chosen_adapter(args.model, args.adapter, args.base)
            self._loop = LoopThread()
            options = engine_options(
                args.model, args.adapter, max_num_seqs=4, max_model_len=args.max_model_len
            )
            engine = self._loop.run(start_engine(options))
            atexit.register(self._shutdown)
            run = self._loop.run
        self.engine, self.run = engine, run
        self.config = session_config(engine, args)

    @classmethod
    def attach(cls, engine: Any, run: Runner, **options: Any) -> ExposstAgent:
        """An agent on an engine that already runs on the loop behind ``run`` (tests, scripts)."""
        return cls(cls.options(**options), engine=engine, run=run)

    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--model", default="default", help="checkpoint folder, 'default' or tiny-llama"
        )
        add_weight_flags(parser)  # the adapter's exposst.json applies
        # unset options come from the adapter's exposst.json, else the defaults
        parser.add_argument(
            "--policy", default=None, help=f"e.g. wait-3 (default {DEFAULT_POLICY})"
        )
        parser.add_argument("--mode", default=None, choices=MODES)
        parser.add_argument(
            "--slot-len", type=int, default=None, help=f"default {DEFAULT_SLOT_LEN}"
        )
        parser.add_argument("--source-lang", default=None, help=f"default {SOURCE_LANG}")
        parser.add_argument("--target-lang", default=None, help=f"default {TARGET_LANG}")
        parser.add_argument("--max-target-tokens", type=int, default=None)
        parser.add_argument("--max-model-len", type=int, default=2048)

    # -- SessionAgent's steps -------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        if self.session is not None:  # ended or dropped: free it
            self.run(self.session.close())
        self.session = None

    def start_sentence(self) -> WordSplitter:
        self.session = self.run(self.engine.open(self.config))
        return WordSplitter()

    def step(self, new_words: list[str], finish: bool) -> tuple[list[WrittenWord], bool]:
        """The words the pieces' texts add: the session holds back an unfinished UTF-8
        character, so SimulEval gets the words a server's client gets, never half of one."""
        self.run(self._push(new_words, finish))
        pieces, ended = self.run(collect(self.session))
        written = self.words.extend("".join(piece.text for piece in pieces), self.pushed)
        if ended:
            final_text = self.run(self.session.result()).text
            if final_text != self.words.text:
                logger.warning(
                    "session text %r differs from its pieces %r", final_text, self.words.text
                )
        return written, ended

    def drop_sentence(self) -> None:
        pass  # reset() closes the session

    # -- helpers --------------------------------------------------------------------
    async def _push(self, new_words: list[str], finish: bool) -> None:
        for word in new_words:
            await self.session.push(word + " ")
        if finish:
            await self.session.finish()

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


def session_config(engine: Any, args: Namespace) -> SessionConfig:
    """The engine's defaults, then the adapter's ``exposst.json``, then the agent's options
    (checked now, not per sentence)."""
    config = engine.session_config(
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
            out[-1] = (text + word.text, delay)
        else:
            out.append((word.text, word.delay))
    return out


def simuleval_args(argv: list[str], agent_class: type = ExposstAgent) -> Namespace:
    """SimulEval's own options (and the agent class's) parsed from ``argv``.

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
        agent_class.add_args(parser)
        return parser.parse_args(argv)
    finally:
        sys.argv = saved


def evaluate_agent(agent: SessionAgent, argv: list[str]) -> Any:
    """Run SimulEval's sentence-level evaluator on ``agent`` in this process.

    ``argv`` are SimulEval options (``--source``, ``--target``, ``--output``, ...).
    Returns the evaluator (its ``instances`` and ``results``).
    """
    from simuleval.evaluator import build_evaluator

    args = simuleval_args(argv, type(agent))
    args.source_type, args.target_type = agent.source_type, agent.target_type  # as its CLI does
    evaluator = build_evaluator(args)
    evaluator(agent)
    return evaluator
