"""The routes as a vLLM endpoint plugin, attached when ExPosST's scheduler is chosen."""

from __future__ import annotations

import asyncio
from argparse import Namespace
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket

from . import engine_death
from .chat import chat_completions
from .context import ServerContext, create_context
from .listen import listen, page, subtitles
from .realtime import realtime


class ExposstRoutes:
    """``EndpointPlugin`` (vllm.plugins.endpoint_plugins.interface) for the simul routes."""

    name = "exposst"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.context: ServerContext | None = None
        self.watcher: asyncio.Task | None = None  # engine_death.watch

    def attach_router(self, app: FastAPI) -> None:
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
                "dtype": engine.dtype,
                **context.listeners.stats(),
            }

        @router.websocket("/v1/simul/realtime")
        async def simul_realtime(websocket: WebSocket):
            await realtime(websocket, self._context())

        # listeners: outside /v1, so a listen token (not the API key) opens them
        @router.websocket("/simul/listen")
        async def simul_listen(websocket: WebSocket):
            await listen(websocket, self._context().listeners)

        @router.get("/simul/subtitles/{name}")
        async def simul_subtitles(name: str, token: str | None = None, track: str = "translation"):
            return subtitles(self._context().listeners, name, token, track)

        @router.get("/simul/captions")
        async def simul_captions():
            return page("captions")

        @router.get("/simul/captions.js")
        async def simul_captions_js():
            return page("captions.js")

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
