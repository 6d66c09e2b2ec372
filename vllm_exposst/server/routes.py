"""The routes as a vLLM endpoint plugin, attached when ExPosST's scheduler is chosen."""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket

from ..origins import OriginPolicy
from . import engine_death, redact
from .alignatt import alignatt
from .chat import chat_completions
from .context import ServerContext, create_context
from .errors import ApiError
from .listen import listen, page, refusal, subtitles
from .realtime import realtime

logger = logging.getLogger("vllm.exposst.routes")  # under vLLM's handler: in the server log


async def refused_origin(websocket: WebSocket, policy: OriginPolicy) -> bool:
    """Refuse a browser page from another origin at the handshake (HTTP 403, before
    the WebSocket opens: the page gets no frame; docs/api.md)."""
    if policy.allows(websocket.headers):
        return False
    origin = websocket.headers.get("origin")
    logger.warning(
        "refused a WebSocket on %s from a page of %r: not this server's origin, not in "
        "exposst.allowed_origins",
        websocket.url.path,
        origin,
    )
    error = ApiError(
        403,
        f"a page from {origin!r} may not open this WebSocket: only this server's own "
        "pages and the origins in exposst.allowed_origins may (clients that send no "
        "Origin header are not browsers and are let in)",
        "permission_error",
        "origin_not_allowed",
    )
    await websocket.send_denial_response(refusal(error))
    return True


class ExposstRoutes:
    """``EndpointPlugin`` (vllm.plugins.endpoint_plugins.interface) for the simul routes."""

    name = "exposst"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.context: ServerContext | None = None
        self.watcher: asyncio.Task | None = None  # engine_death.watch

    def attach_router(self, app: FastAPI) -> None:
        redact.install()  # listen tokens out of uvicorn's logs, before it logs anything
        router = APIRouter()

        @router.post("/v1/simul/chat/completions")
        async def simul_chat(request: Request):
            return await chat_completions(request, self._context())

        @router.get("/v1/simul/stats")
        async def simul_stats():
            """Scheduler counts: sessions, KV blocks, tokens computed per request; the dtype."""
            context = self._context()
            stats = await context.engine.stats()
            engine = context.engine
            return {
                **stats,
                "open_sessions": len(engine.sessions),
                "speakers": len(context.connections),
                "max_speakers": context.max_speakers,
                "dtype": engine.dtype,
                **context.listeners.stats(),
            }

        @router.websocket("/v1/simul/realtime")
        async def simul_realtime(websocket: WebSocket):
            context = self._context()
            if not await refused_origin(websocket, context.origins):
                await realtime(websocket, context)

        # WhisperLiveKit's remote translation backend (protocol v1 of alignatt-mt-server)
        @router.websocket("/v1/simul/alignatt")
        async def simul_alignatt(websocket: WebSocket):
            context = self._context()
            if not await refused_origin(websocket, context.origins):
                await alignatt(websocket, context)

        # listeners: outside /v1, so a listen token (not the API key) opens them
        @router.websocket("/simul/listen")
        async def simul_listen(websocket: WebSocket):
            context = self._context()
            if not await refused_origin(websocket, context.origins):
                await listen(websocket, context.listeners)

        @router.get("/simul/subtitles/{name}")
        async def simul_subtitles(name: str, token: str | None = None, track: str = "translation"):
            return subtitles(self._context().listeners, name, token, track)

        # the caption page, its script and style (a policy of their own: listen.page)
        @router.get("/simul/captions")
        async def simul_captions(request: Request):
            return page("captions", request.headers.get("host"))

        @router.get("/simul/captions.js")
        async def simul_captions_js(request: Request):
            return page("captions.js", request.headers.get("host"))

        @router.get("/simul/captions.css")
        async def simul_captions_css(request: Request):
            return page("captions.css", request.headers.get("host"))

        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if engine_client is None:
            raise RuntimeError("the ExPosST routes need an engine (not the render server)")
        self.context = await create_context(engine_client, state)
        state.exposst = self.context
        context = self.context
        self.watcher = asyncio.get_running_loop().create_task(
            engine_death.watch(
                engine_client, lambda: context.connections, lambda c: c.engine_died()
            )
        )

    def _context(self) -> ServerContext:
        if self.context is None:
            raise RuntimeError("ExPosST routes used before the server finished starting")
        return self.context
