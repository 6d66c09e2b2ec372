"""ExPosST engines default to the platform's dtype; merged checkpoints bring their settings.

``EngineArgs.create_model_config`` is where vLLM resolves ``--dtype``; these tests build
the real ModelConfig (no engine) to show what an engine would run in.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vllm_exposst import models, plugin, switch
from vllm_exposst.adapter_meta import merged_model_settings, write_adapter_meta
from vllm_exposst.precision import platform_dtype, resolve_dtype


def model_config(path, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    plugin.register()
    args = EngineArgs(model=str(path), max_model_len=256, **kwargs)
    return args, args.create_model_config()


def test_cpu_platform_dtype_is_float32_and_explicit_dtypes_pass():
    assert platform_dtype() == "float32"  # this project's CI is a CPU machine
    assert resolve_dtype("auto") == resolve_dtype(None) == "float32"
    assert resolve_dtype("bfloat16") == "bfloat16"


def test_exposst_engines_turn_auto_into_float32_where_vllm_picks_bfloat16(model_cache):
    path = models.tiny_model("llama", model_cache)
    config = json.loads((path / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    _, plain = model_config(path, dtype="auto")
    assert plain.dtype == torch.bfloat16  # vLLM's own choice on the CPU, unchanged
    _, ours = model_config(path, dtype="auto", scheduler_cls=switch.SCHEDULER_CLS)
    assert ours.dtype == torch.float32
    _, asked = model_config(path, dtype="bfloat16", scheduler_cls=switch.SCHEDULER_CLS)
    assert asked.dtype == torch.bfloat16  # the documented override


def test_a_merged_checkpoints_exposst_json_becomes_the_session_defaults(model_cache, tmp_path):
    path = tmp_path / "merged"
    shutil.copytree(models.tiny_model("llama", model_cache), path)
    write_adapter_meta(
        path, {"layout": "exposst", "inference_policy": "wait-2", "slot_len": 5, "steps": 9}
    )
    assert merged_model_settings(path) == {"policy": "wait-2", "slot_len": 5, "mode": "exposst"}
    args, _ = model_config(path, scheduler_cls=switch.SCHEDULER_CLS)
    assert args.additional_config["exposst"] == {
        "policy": "wait-2",
        "slot_len": 5,
        "mode": "exposst",
    }
    given = {"exposst": {"slot_len": 3, "max_sessions": 4}}
    args, _ = model_config(path, scheduler_cls=switch.SCHEDULER_CLS, additional_config=given)
    assert args.additional_config["exposst"] == {
        "policy": "wait-2", "slot_len": 3, "mode": "exposst", "max_sessions": 4,
    }  # fmt: skip
    args, _ = model_config(path)  # not an ExPosST engine: untouched
    assert "exposst" not in (args.additional_config or {})


def test_torchcodecs_stored_import_error_keeps_no_frames():
    """The traceback that kept engines alive until interpreter teardown is dropped."""
    plugin.register()
    from vllm.multimodal.media import audio

    error = audio._torchcodec_import_exc
    if error is None:
        pytest.skip("torchcodec is importable here: nothing is stored")
    assert error.__traceback__ is None and "torchcodec" in str(error)
