"""API-server side patch: the ``/v1/simul`` routes on ``vllm serve`` apps whose engine runs
ExPosST's scheduler (ledger in :mod:`vllm_exposst.patch`).

vLLM's own endpoint-plugin loader only takes plugins named in ``VLLM_PLUGINS``; here the
scheduler flag is the opt-in, so ``--scheduler-cls`` alone switches on both the engine
side and the routes.
"""

from __future__ import annotations

from typing import Any

from ..switch import is_exposst_scheduler
from . import replace


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
