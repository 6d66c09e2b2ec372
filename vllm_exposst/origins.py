"""Which browser pages may open the WebSocket routes (cross-site WebSocket hijacking).

Browsers apply no same-origin rule (nor CORS) to WebSockets: any web page a speaker
or listener visits may open ``ws://<this server>/...``, and a server without
``--api-key`` would let it speak, or read a session with a token it found.  Browsers
always send the page's ``Origin`` on the handshake, so the server refuses pages from
other origins there.  A handshake without ``Origin`` (Python ``websockets``, curl,
OBS plugins) is not a browser page and is let in; its credentials (API key, listen
token) are its guard.

Core of the rule; no web framework imported, so :mod:`vllm_exposst.options` can
validate ``exposst.allowed_origins`` with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` as a browser writes it (lower case, no default port).

    ``ValueError`` for anything else (a path, a query, user info, ``null``)."""
    parts = urlsplit(value.strip().lower().removesuffix("/"))
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin (bad port): {value!r}") from None
    if (
        not SCHEME.fullmatch(parts.scheme)
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {value!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def parse_allowed_origins(value: object) -> tuple[str, ...]:
    """The option's origins, normalized; ``("*",)`` for every origin.

    ``ValueError`` naming what is wrong (for the start-up message)."""
    if value == ANY:
        return (ANY,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of origins like "https://captions.example.org", or "*"')
    if ANY in value:
        return (ANY,)
    if any(v.strip().lower() == "null" for v in value):
        raise ValueError(
            '"null" is sent by file:// pages and sandboxed frames of any site; "*" lets them in'
        )
    return tuple(normalize_origin(v) for v in value)


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(f"//{netloc.strip().lower()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORTS.get(scheme)


def same_origin(origin: str, host: str | None) -> bool:
    """The page came from this server: its origin's host and port are the ``Host``
    the browser connected to (the scheme is not compared: behind a TLS proxy the page
    is ``https`` while the server sees plain HTTP; a ``Host`` without a port means the
    page's default port)."""
    if not host:
        return False
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname or not parts.scheme:
        return False
    page = (parts.hostname, port if port is not None else DEFAULT_PORTS.get(parts.scheme))
    return page == _host_port(host, parts.scheme)


@dataclass(frozen=True)
class OriginPolicy:
    """``exposst.allowed_origins`` applied to a handshake's headers."""

    allowed: tuple[str, ...] = ()

    @classmethod
    def from_option(cls, value: Iterable[str] | str) -> OriginPolicy:
        return cls(parse_allowed_origins(value if isinstance(value, str) else list(value)))

    def allows(self, headers: Mapping[str, str]) -> bool:
        """No ``Origin`` (not a browser), same origin, a listed one, or ``*``."""
        origin = headers.get("origin")
        if origin is None or ANY in self.allowed or same_origin(origin, headers.get("host")):
            return True
        try:
            return normalize_origin(origin) in self.allowed
        except ValueError:
            return False  # "null" (a file:// page, a sandboxed frame) and the like
