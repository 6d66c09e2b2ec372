"""When the engine core dies under ``vllm serve``: every live client hears it, then the
server exits with a non-zero code so that a supervisor (``Restart=on-failure``, a
container restart policy) starts it again (``docs/deploy.md``).

vLLM's own watchdog stops the HTTP server within 5 s of the death and ``vllm serve``
then returns normally (exit code 0).  :func:`watch` sees the death sooner (every
0.5 s), marks the engine client (:data:`DIED`, read by ``patch/api_server.py`` to turn
the exit into code 1) and has every WebSocket connection send an ``engine_dead``
error and close with code 1011.  A stop that was asked for (SIGTERM: the engine
client's ``shutdown`` runs first, ``patch/teardown.py`` marks it) is not a death.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

DIED = "exposst_engine_died"  # set on the engine client when its core died unasked
STOPPING = "exposst_stopping"  # set by AsyncLLM.shutdown (patch/teardown.py)
POLL_SECONDS = 0.5


def engine_died(engine_client: Any) -> bool:
    """Has the engine failed without anyone asking it to stop?"""
    if getattr(engine_client, DIED, False):
        return True
    return bool(getattr(engine_client, "errored", False)) and not getattr(
        engine_client, STOPPING, False
    )


async def watch(
    engine_client: Any,
    connections: Callable[[], Iterable[Any]],
    on_death: Callable[[Any], Awaitable[None]],
) -> None:
    """Poll the engine; once it died, mark it and tell every connection (``on_death``)."""
    while not engine_died(engine_client):
        await asyncio.sleep(POLL_SECONDS)
    setattr(engine_client, DIED, True)
    logger.error("the engine core died: telling %d live client(s)", len(list(connections())))
    await asyncio.gather(
        *(on_death(connection) for connection in list(connections())), return_exceptions=True
    )
