"""Listen tokens out of the server's logs.

A listen token travels in URLs (``/simul/listen?session=..&token=..``, subtitles,
the caption page), and uvicorn writes each request's path with its query string:
HTTP requests to ``uvicorn.access``, WebSocket handshakes to ``uvicorn.error``.  A
log file is read by more people, and kept longer, than a session lasts, so every
``token=`` value is replaced before any handler formats the record.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
# a query parameter named token (or ..._token): its value up to the next separator
TOKEN_VALUE = re.compile(r"(token=)[^&\s\"'#;]+", re.IGNORECASE)
# the loggers uvicorn writes request paths to (filters act where a record is logged)
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


def redact(text: str) -> str:
    return TOKEN_VALUE.sub(rf"\g<1>{REDACTED}", text)


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class TokenRedactor(logging.Filter):
    """Rewrites the message and its arguments in place, keeping the arguments' shape
    (uvicorn's access formatter unpacks them: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers, once.  A logger's filters survive uvicorn's
    ``dictConfig`` (it replaces handlers, not filters), so this may run before it."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactor) for f in logger.filters):
            logger.addFilter(TokenRedactor())
