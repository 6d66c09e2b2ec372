"""The patches of vLLM (ledger, idempotence, V1 pin, LoRA ops) and the position table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vllm_exposst import patch, plugin, switch
from vllm_exposst.positions import PositionHook, PositionTable
from vllm_exposst.scheduler import external_id


class _Config:
    def __init__(self, scheduler_cls):
        self.scheduler_config = type("S", (), {"scheduler_cls": scheduler_cls})()


def test_position_table_replays_chunks_and_generated_tokens():
    table = PositionTable()
    table.update(0, [0, 1, 2, 3, 4, 6], decode=7)  # prefix, 2 source, header; then t1...
    np.testing.assert_array_equal(table.lookup(np.arange(9)), [0, 1, 2, 3, 4, 6, 7, 8, 9])
    # turn ended after t1, t2 were computed (indices 6, 7); next chunk: source at 5
    table.update(8, [5], decode=10)
    np.testing.assert_array_equal(table.lookup(np.arange(10)), [0, 1, 2, 3, 4, 6, 7, 8, 5, 10])
    # the whole history again, as after preemption
    np.testing.assert_array_equal(table.lookup(np.arange(3)), [0, 1, 2])


def test_hook_tables_follow_scheduler_output():
    hook = PositionHook()
    params = type(
        "P", (), {"extra_args": {"exposst": {"start": 0, "positions": [0, 1, 5], "decode": 9}}}
    )()
    new = type("N", (), {"req_id": "r1", "sampling_params": params})()
    plain = type("N", (), {"req_id": "r2", "sampling_params": type("P", (), {})()})()
    output = type("O", (), {"finished_req_ids": set(), "scheduled_new_reqs": [new, plain]})()
    hook.on_scheduler_output(output)
    assert set(hook.tables) == {"r1"}
    output.finished_req_ids, output.scheduled_new_reqs = {"r1"}, []
    hook.on_scheduler_output(output)
    assert hook.tables == {}


def test_external_request_id():
    assert external_id("exposst-abc-123456-0f1e2d3c") == "exposst-abc-123456"
    assert external_id("plain") == "plain"


def test_lora_ops_give_tokens_without_an_adapter_no_contribution():
    """vLLM 0.32's torch LoRA ops read index -1 as the last adapter slot; the fix zeroes it."""
    import torch

    from vllm_exposst.patch import lora_cpu

    torch.manual_seed(0)
    weights = torch.randn(2, 1, 4, 6)  # 2 adapter slots, rank 4, hidden 6
    inputs = torch.randn(3, 6)
    indices = torch.tensor([-1, 0, 1])
    out = torch.zeros(3, 4)
    lora_cpu.bgmv_shrink(inputs, weights, out, indices, 0.5)
    assert torch.all(out[0] == 0)
    torch.testing.assert_close(out[1], 0.5 * weights[0, 0] @ inputs[1])
    torch.testing.assert_close(out[2], 0.5 * weights[1, 0] @ inputs[2])
    expand = torch.randn(2, 1, 6, 4)
    base = torch.ones(3, 6)
    lora_cpu.bgmv_expand(out, expand, base, indices, add_inputs=True)
    torch.testing.assert_close(base[0], torch.ones(6))
    torch.testing.assert_close(base[1], 1 + expand[0, 0] @ out[1])


def test_exposst_engines_pin_the_v1_model_runner():
    from vllm.config import VllmConfig

    plugin.register()  # idempotent; vLLM also calls it when it loads plugins
    assert VllmConfig.use_v2_model_runner.fget(_Config(switch.SCHEDULER_CLS)) is False


def test_every_patched_attribute_is_in_the_ledger_and_applied_once():
    """register() twice leaves one layer of wrapping; each replaced attribute is listed."""
    import importlib

    plugin.register()
    plugin.register()
    for entry in patch.LEDGER:
        path, _, rest = entry.target.partition(" ")
        module_name, *attrs = _split_target(path)
        owner = importlib.import_module(module_name)
        for attr in attrs[:-1]:
            owner = getattr(owner, attr)
        head, _, options = attrs[-1].rstrip("}").partition("{")
        names = [head + option for option in options.split(",")] if options else [head]
        for name in names:
            value = getattr(owner, name)
            function = value.fget if isinstance(value, property) else value
            original = getattr(function, patch.MARK, None)
            assert original is not None, f"{entry.target}: {name} is not patched"
            inner = original.fget if isinstance(original, property) else original
            assert getattr(inner, patch.MARK, None) is None, f"{name} wrapped twice"
            assert (Path(patch.__file__).parent / f"{entry.module}.py").exists()


def _split_target(path: str) -> list[str]:
    """``a.b.C.meth`` -> [importable module, attribute, ...]."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return [".".join(parts[:cut]), *parts[cut:]]
    raise ImportError(path)


SIGNAL_ON_ANOTHER_THREAD = """
import queue, signal, sys, threading, time
from vllm_exposst.patch.teardown import WakingQueue

def stop(signum, frame):
    print("handled", flush=True)
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)
inputs = {kind}()
def other_thread():  # SIGTERM goes to this thread, as the kernel may choose for a process
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    time.sleep(30)
threading.Thread(target=other_thread, daemon=True).start()
inputs.get()  # the idle engine core's wait
"""


def _idle_wait_then_signal(kind: str) -> tuple[bool, str]:
    """Run the script; True if its main thread handled the signal within 5 s."""
    import subprocess
    import sys

    script = SIGNAL_ON_ANOTHER_THREAD.format(kind=kind)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        return False, ""
    return done.returncode == 0, done.stdout


def test_an_idle_core_handles_a_signal_that_landed_on_another_thread():
    """The engine core's idle wait (patch/teardown.py): with vLLM's plain queue the
    handler never runs while the main thread waits; with WakingQueue it runs."""
    assert _idle_wait_then_signal("WakingQueue") == (True, "handled\n")
    assert _idle_wait_then_signal("queue.Queue") == (False, "")  # the bug it fixes


READER_WAIT = """
import gc, json, threading, time
from vllm_exposst import plugin
plugin.register()
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

writer = MessageQueue(n_reader=1, n_local_reader=1)
handle, got = writer.export_handle(), {}
if DROP_NOTIFICATIONS:  # as if every notification after the first message were lost
    notify = writer._spin_condition.notify
    writer._spin_condition.notify = lambda: None

def read():
    reader = MessageQueue.create_from_handle(handle, 0)
    reader.wait_until_ready()
    got["first"] = reader.dequeue()
    cpu, wall = time.thread_time(), time.monotonic()
    got["second"] = reader.dequeue()  # the writer sends it 0.5 s later
    got["cpu"], got["wall"] = time.thread_time() - cpu, time.monotonic() - wall
    del reader

thread = threading.Thread(target=read)
thread.start()
writer.wait_until_ready()
writer.enqueue("a")
if DROP_NOTIFICATIONS:
    notify()
time.sleep(0.5)
writer.enqueue("b")
thread.join(10)
del writer
gc.collect()
print(json.dumps(got))
"""


def _reader_wait(spin: str | None, drop_notifications: bool = False) -> dict:
    """A queue reader's wait for a message sent 0.5 s after the previous one."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VLLM_EXPOSST_READER_SPIN_S"}
    if spin is not None:
        env["VLLM_EXPOSST_READER_SPIN_S"] = spin
    done = subprocess.run(
        [sys.executable, "-c", f"DROP_NOTIFICATIONS = {drop_notifications}\n" + READER_WAIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_queue_reader_sleeps_instead_of_spinning_when_told():
    """With VLLM_EXPOSST_READER_SPIN_S=0 the reader gets its message (woken by the writer's
    notification) and spends next to no CPU waiting; without it, vLLM's reader spins."""
    sleeping = _reader_wait("0")
    assert sleeping["second"] == "b" and sleeping["wall"] >= 0.4
    assert sleeping["cpu"] < 0.1 * sleeping["wall"], sleeping
    spinning = _reader_wait(None)
    assert spinning["second"] == "b"
    # the measure sees a spin: on a loaded machine the spinner gets only its share of
    # the cores, but still far more CPU than a sleeper
    assert spinning["cpu"] > 10 * max(sleeping["cpu"], 0.001), (spinning, sleeping)


def test_a_sleeping_reader_finds_a_message_whose_notification_was_lost():
    """While the queue is active the reader rechecks every few ms: a lost notification
    costs milliseconds, not vLLM's 5 s recheck."""
    lost = _reader_wait("0", drop_notifications=True)
    assert lost["second"] == "b"
    assert lost["wall"] < 0.5 + 0.2, lost
    assert lost["cpu"] < 0.2 * lost["wall"], lost  # still sleeping, not spinning


def test_the_cpu_process_layout_is_a_default_the_environment_overrides(monkeypatch):
    from vllm_exposst.patch import engine_args

    monkeypatch.delenv("VLLM_EXPOSST_READER_SPIN_S", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    engine_args.cpu_process_layout()
    assert os.environ["VLLM_EXPOSST_READER_SPIN_S"] == "0"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ  # vLLM's reserved core stays
    monkeypatch.setenv("VLLM_EXPOSST_READER_SPIN_S", "1")  # a user's own choice
    engine_args.cpu_process_layout()
    assert os.environ["VLLM_EXPOSST_READER_SPIN_S"] == "1"
