"""SimulEval agent for a running server: a client of its WebSocket ``/v1/simul/realtime``.

It appends each word, reads deltas until the server's ``input_text.waiting`` (or
``response.output_text.done``) and answers SimulEval as the in-process agent does
(:class:`~vllm_exposst.evaluation.agents.SessionAgent`, docs/api.md).

    simuleval --agent eval/remote_agent.py --source test.en --target test.de \\
        --output out/se --server-url ws://127.0.0.1:8000 --policy wait-3
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from argparse import ArgumentParser, Namespace
from typing import Any

from ..defaults import MODES
from .agents import SessionAgent, WordSplitter, WrittenWord

logger = logging.getLogger(__name__)


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
        parser.add_argument("--mode", default=None, choices=MODES)
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
        self.unsent = ""  # deltas received since the last answer to SimulEval
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
                self.unsent += event["delta"]
            elif kind == "input_text.waiting" and not finish:
                if event.get("source_words_read", self.pushed) >= self.pushed:
                    return self._written(), False
            elif kind == "response.output_text.done":
                written = self._written()
                if event["text"] != self.words.text:  # the server breaks its contract
                    logger.warning(
                        "session text %r differs from its deltas %r", event["text"], self.words.text
                    )
                return written, True

    def _written(self) -> list[WrittenWord]:
        added, self.unsent = self.unsent, ""
        return self.words.extend(added, self.pushed)

    def drop_sentence(self) -> None:
        """The server has a sentence in progress: a fresh connection frees it."""
        self.close()
        self._connect()
