"""API-server side patch: the ``/v1/simul`` routes on ``vllm serve`` apps whose engine runs
ExPosST's scheduler (ledger in :mod:`vllm_exposst.patch`).

vLLM's own endpoint-plugin loader only takes plugins named in ``VLLM_PLUGINS``; here the
scheduler flag is the opt-in, so ``--scheduler-cls`` alone switches on both the engine
side and the routes.
"""

from __future__ import annotations

import logging
from typing import Any

from ..server.engine_death import DIED
from ..switch import is_exposst_scheduler
from . import replace

logger = logging.getLogger(__name__)


def apply() -> None:
    try:
        from vllm.entrypoints.launchers import app as app_module
    except ImportError:  # a vLLM without the API server: nothing to attach
        return

    def with_simul_routes(original: Any) -> Any:
        def attach_endpoint_plugins(app: Any, supported_tasks: Any) -> None:
            original(app, supported_tasks)
            args = getattr(app.state, "args", None)
            if is_exposst_scheduler(getattr(args, "scheduler_cls", None)):
                from ..server.routes import ExposstRoutes

                routes = ExposstRoutes()
                routes.attach_router(app)
                app.state.endpoint_plugins = [*getattr(app.state, "endpoint_plugins", []), routes]

        return attach_endpoint_plugins

    replace(app_module, "attach_endpoint_plugins", with_simul_routes)

    try:
        from vllm.entrypoints.launchers.api_server import entry
    except ImportError:
        return

    def exit_code_after_death(original: Any) -> Any:
        async def build_and_serve(engine_client: Any, *args: Any, **kwargs: Any) -> Any:
            shutdown = await original(engine_client, *args, **kwargs)

            async def then_exit() -> Any:
                result = await shutdown
                if getattr(engine_client, DIED, False):
                    logger.error("the engine core died: vllm serve exits with code 1")
                    raise SystemExit(1)
                return result

            return then_exit()

        return build_and_serve

    replace(entry, "build_and_serve", exit_code_after_death)
