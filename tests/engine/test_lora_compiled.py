"""LoRA under torch.compile on the CPU (patch/lora_compile_cpu.py): which engines keep
compilation, and a compiled engine's LoRA sessions against PEFT.

vLLM 0.32 compiles CPU models with one trace and no guards, and turns compilation off
with LoRA.  An ExPosST engine whose LoRA wraps only linear projections keeps it, with
the fused projection as an opaque op; the sessions below (two adapters and plain ones
in one batch, then batches of other mixes) must each equal their own PEFT model, so a
graph that froze one batch's adapters would fail them.
"""

from __future__ import annotations

import pytest

from vllm_exposst import models, plugin
from vllm_exposst.switch import SCHEDULER_CLS

from ..conftest import EVERY_PROJECTION, engine_for_module
from .test_engine import (
    add_two_adapters,
    assert_matches_reference,
    jobs,
    reference,
    run_all,
    template_for,
)


def compilation_mode(path, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    plugin.register()
    options = dict(model=str(path), dtype="float32", max_model_len=1024, enable_lora=True)
    config = EngineArgs(**{**options, **kwargs}).create_engine_config()
    return config.compilation_config.mode


def test_which_engines_keep_compilation_with_lora(model_cache):
    from vllm.config import CompilationMode

    path = models.tiny_model("llama", model_cache)
    linear = list(EVERY_PROJECTION)
    exposst = {"scheduler_cls": SCHEDULER_CLS}
    assert (
        compilation_mode(path, lora_target_modules=linear, **exposst)
        == CompilationMode.DYNAMO_TRACE_ONCE
    )
    # vLLM's rule stands: LoRA wrappers beyond linear projections, any module,
    # --enforce-eager, and engines that do not run ExPosST
    for kwargs in (
        {"lora_target_modules": [*linear, "lm_head"], **exposst},
        exposst,
        {"lora_target_modules": linear, "enforce_eager": True, **exposst},
        {"lora_target_modules": linear},
    ):
        assert compilation_mode(path, **kwargs) == CompilationMode.NONE, kwargs


@pytest.fixture(scope="module")
def compiled(engine_loop, model_cache):
    """A compiled ExPosST engine with LoRA on the tiny Llama's seven projections."""
    path = models.tiny_model("llama", model_cache)
    yield from engine_for_module(
        engine_loop,
        path,
        enforce_eager=False,
        enable_lora=True,
        max_lora_rank=8,
        max_loras=2,
        lora_target_modules=list(EVERY_PROJECTION),
    )


def test_compiled_lora_sessions_equal_transformers_with_peft(
    compiled, engine_loop, model_cache, tmp_path_factory
):
    """Two adapters and plain sessions, mixed in one batch, then each alone in a batch
    (one adapter for every row, and no adapter at all): each equals its own PEFT model."""
    from vllm.config import CompilationMode

    engine = compiled
    assert engine.llm.vllm_config.compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE
    path = models.tiny_model("llama", model_cache)
    model, tokenizer = models.load(path)
    oracles = add_two_adapters(engine, model, path, tmp_path_factory.mktemp("adapters"))
    mixed = jobs(seed=21, count=9)
    for i, (_, config) in enumerate(mixed):
        config.lora = [None, "adapter-a", "adapter-b"][i % 3]
    batches = [mixed]
    for seed, name in enumerate(["adapter-b", None, "adapter-a"], 22):
        batch = jobs(seed=seed, count=4)
        for _, config in batch:
            config.lora = name
        batches.append(batch)
    changed = 0
    for batch in batches:
        results = run_all(engine_loop, engine, batch)
        template = template_for(tokenizer, batch[0][1])
        for job, result in zip(batch, results):
            assert_matches_reference(oracles[job[1].lora], template, job, result)
            if job[1].lora:
                changed += reference(model, template, *job).target_ids != result.target_ids
    assert changed > 0  # the adapters really change the output
