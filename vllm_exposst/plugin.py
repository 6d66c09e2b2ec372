"""Plugin entry point (``vllm.general_plugins``): vLLM calls :func:`register` in every process.

It sets the environment defaults and applies the patches of :mod:`vllm_exposst.patch`,
all of which do nothing unless the engine was started with ExPosST's scheduler:

    vllm serve MODEL --scheduler-cls vllm_exposst.scheduler.ExposstScheduler
    AsyncEngineArgs(model=..., scheduler_cls=vllm_exposst.switch.SCHEDULER_CLS)

Options come from ``--additional-config '{"exposst": {...}}'`` (see :mod:`options`).
Nothing imports this module: the switch everyone asks is :mod:`vllm_exposst.switch`.
"""

from __future__ import annotations

import logging

from . import patch
from .switch import UnsupportedVllmError, apply_env_defaults, check_vllm_version

logger = logging.getLogger(__name__)


def register() -> None:
    """Install the (inert until enabled) patches on a supported vLLM."""
    apply_env_defaults()
    try:
        check_vllm_version()
    except UnsupportedVllmError as err:
        logger.warning("%s The ExPosST patches are not applied.", err)
        return
    patch.apply_all()
