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

:class:`RemoteExposstAgent` does the same with a running server, as a client of its
WebSocket ``/v1/simul/realtime`` (docs/api.md): it appends each word, reads deltas
until the server's ``input_text.waiting`` (or ``response.output_text.done``) and
answers SimulEval in the same way.  Both share :class:`SessionAgent`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from simuleval.agents import AgentStates, ReadAction, TextToTextAgent, WriteAction

from ..engine import SESSION_MODES, Session, SessionConfig, TargetPiece
from ..layout import DEFAULT_SLOT_LEN
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

    def __init__(self, decode: Callable[[list[int]], str] | None = None) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""

    def add(self, token_ids: list[int], delay: int) -> list[WrittenWord]:
        """The words these tokens add, written at ``delay``."""
        self.ids += token_ids
        return self.add_text(self.decode(self.ids), delay)

    def add_text(self, text: str, delay: int) -> list[WrittenWord]:
        """The words the translation so far, now ``text``, adds, written at ``delay``."""
        before = self.text.split()
        self.text = text
        now = self.text.split()
        out: list[WrittenWord] = []
        if before and len(now) >= len(before) and now[len(before) - 1] != before[-1]:
            old, new = before[-1], now[len(before) - 1]
            kept = len(os.path.commonprefix([old, new]))
            out.append(WrittenWord(new[kept:], delay, continues=True, drop=len(old) - kept))
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
        return cls(cls.options(**options), engine=engine, run=run)

    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--model", default="default", help="checkpoint folder, 'default' or tiny-llama"
        )
        parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder")
        parser.add_argument("--policy", default="wait-3", help="e.g. wait-3, read-2/write-1")
        parser.add_argument("--mode", default="exposst", choices=SESSION_MODES)
        parser.add_argument("--slot-len", type=int, default=DEFAULT_SLOT_LEN)
        parser.add_argument("--source-lang", default="English")
        parser.add_argument("--target-lang", default="German")
        parser.add_argument("--max-target-tokens", type=int, default=None)
        parser.add_argument("--max-model-len", type=int, default=2048)

    # -- SessionAgent's steps -------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        if self.session is not None:  # ended or dropped: free it
            self.run(self.session.close())
        self.session = None

    def start_sentence(self) -> WordSplitter:
        self.session = self.run(self.engine.open(SessionConfig(**vars(self.config))))
        return WordSplitter(self.session.template.decode)

    def step(self, new_words: list[str], finish: bool) -> tuple[list[WrittenWord], bool]:
        self.run(self._push(new_words, finish))
        pieces, ended = self.run(collect(self.session))
        batch = [token for piece in pieces for token in piece.token_ids]
        written = self.words.add(batch, self.pushed) if batch else []
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


class RemoteAgentError(RuntimeError):
    """The server refused, failed or did not answer in time (the message says which)."""


REALTIME_PATH = "/v1/simul/realtime"
# session.update fields, from the agent options of the same names (None: the server's)
REMOTE_SESSION_FIELDS = ("model", "policy", "slot_len", "mode", "source_lang", "target_lang")


def realtime_url(server_url: str) -> str:
    """``ws://host:port`` (or ``http://...``, or the full route) to the route's URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--server-url: expected ws://HOST:PORT, got {server_url!r}")
    path = parts.path if parts.path.rstrip("/") else REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class RemoteExposstAgent(SessionAgent):
    """Simultaneous translation by a running server, over its WebSocket route.

    One connection serves the whole test set, a sentence after the other (after
    ``done``, the next append starts a new sentence).  Every wait for the server is
    bounded by ``--timeout``; an ``error`` event, a closed connection or a timeout
    raises :class:`RemoteAgentError`.  The settings go to the server once, at start
    (``session.update``): a bad policy or an unknown model fails here, not at the
    first sentence.
    """

    def __init__(self, args: Namespace | None = None) -> None:
        self.ws: Any = None
        super().__init__(args)  # calls reset()
        self.url = realtime_url(args.server_url)
        self.timeout = args.timeout
        self.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.update = {
            key: getattr(args, key)
            for key in REMOTE_SESSION_FIELDS
            if getattr(args, key) is not None
        }
        self.settings: dict[str, Any] = {}  # the server's effective settings
        self._connect()
        atexit.register(self.close)

    @staticmethod
    def add_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--server-url",
            default="ws://127.0.0.1:8000",
            help="the server: ws://HOST:PORT (the route /v1/simul/realtime is added)",
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("VLLM_API_KEY"),
            help="the server's --api-key (default: $VLLM_API_KEY)",
        )
        parser.add_argument(
            "--model", default=None, help="served model or LoRA adapter name (default: the base)"
        )
        parser.add_argument("--policy", default=None, help="e.g. wait-3 (default: the server's)")
        parser.add_argument("--mode", default=None, choices=SESSION_MODES)
        parser.add_argument("--slot-len", type=int, default=None)
        parser.add_argument("--source-lang", default=None)
        parser.add_argument("--target-lang", default=None)
        parser.add_argument(
            "--timeout", type=float, default=300.0, help="seconds to wait for any server event"
        )

    # -- the connection ---------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        try:
            self.ws = connect(
                self.url,
                additional_headers=self.headers,
                open_timeout=self.timeout,
                max_size=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
            raise RemoteAgentError(f"cannot connect to {self.url}: {err}") from err
        self.settings = self._expect("session.created")["session"]
        if self.update:
            self._send({"type": "session.update", "session": self.update})
            self.settings = self._expect("session.updated")["session"]
        logger.info("connected to %s: %s", self.url, self.settings)

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None

    def _send(self, event: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.send(json.dumps(event))
        except ConnectionClosed as err:
            raise RemoteAgentError(f"the server at {self.url} closed the connection") from err

    def _receive(self) -> dict[str, Any]:
        """The next event; an ``error`` event, a closed connection or silence raises."""
        from websockets.exceptions import ConnectionClosed

        try:
            event = json.loads(self.ws.recv(timeout=self.timeout))
        except TimeoutError as err:
            raise RemoteAgentError(
                f"no event from {self.url} in {self.timeout:g} s (--timeout)"
            ) from err
        except ConnectionClosed as err:
            raise RemoteAgentError(
                f"the server at {self.url} closed the connection ({err})"
            ) from err
        if event.get("type") == "error":
            error = event.get("error", {})
            raise RemoteAgentError(
                f"server error {error.get('code')!r}: {error.get('message')}"
                + (f" (on {error['event_type']})" if error.get("event_type") else "")
            )
        return event

    def _expect(self, kind: str) -> dict[str, Any]:
        event = self._receive()
        if event.get("type") != kind:
            raise RemoteAgentError(f"expected {kind!r} from {self.url}, got {event!r}")
        return event

    # -- SessionAgent's steps ---------------------------------------------------------
    def start_sentence(self) -> WordSplitter:
        self.received = ""  # the deltas so far, joined
        return WordSplitter()

    def step(self, new_words: list[str], finish: bool) -> tuple[list[WrittenWord], bool]:
        if not new_words and not finish:
            return [], False  # nothing new: the session still waits
        if new_words:
            self._send({"type": "input_text.append", "text": "".join(w + " " for w in new_words)})
        if finish:
            self._send({"type": "input_text.commit"})
        while True:
            event = self._receive()
            kind = event.get("type")
            if kind == "response.output_text.delta":
                self.received += event["delta"]
            elif kind == "input_text.waiting" and not finish:
                if event.get("source_words_read", self.pushed) >= self.pushed:
                    return self.words.add_text(self.received, self.pushed), False
            elif kind == "response.output_text.done":
                # the session's own text: the joined deltas differ only where a token
                # cut a UTF-8 character in two; the final words follow the session
                if event["text"] != self.received:
                    logger.warning(
                        "session text %r differs from its deltas %r", event["text"], self.received
                    )
                return self.words.add_text(event["text"], self.pushed), True

    def drop_sentence(self) -> None:
        """The server has a sentence in progress: a fresh connection frees it."""
        self.close()
        self._connect()


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
