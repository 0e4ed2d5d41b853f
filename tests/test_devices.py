"""--device parsing, one GPU per job slot, peak-memory definitions and the multi-process refusal, with CUDA
mocked (torch.cuda.is_available / device_count), so they run on any machine."""

from __future__ import annotations

import logging
import subprocess
import threading

import pytest
import torch

from peftbench.errors import UsageError
from peftbench.harness.run import devices as D
from peftbench.harness.sweep import executors as X


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_a_one_line_usage_error(monkeypatch, spec):
    _gpus(monkeypatch, 0)
    with pytest.raises(UsageError) as e:
        D.parse_device(spec)
    msg = str(e.value)
    assert "no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu" in msg
    assert "\n" not in msg


def test_auto_and_cpu(monkeypatch):
    _gpus(monkeypatch, 0)
    assert D.parse_device("auto") == torch.device("cpu")
    assert D.parse_device("cpu") == torch.device("cpu")
    _gpus(monkeypatch, 2)
    assert D.parse_device("auto") == torch.device("cuda")
    assert D.parse_device(" cpu ") == torch.device("cpu")


def test_cuda_index_in_and_out_of_range(monkeypatch):
    _gpus(monkeypatch, 2)
    assert D.parse_device("cuda") == torch.device("cuda")
    assert D.parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UsageError, match=r"--device cuda:2: only 2 CUDA device\(s\) visible \(cuda:0 to cuda:1\)"):
        D.parse_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "auto:1", "cuda:x", ""])
def test_malformed_device_is_a_usage_error(monkeypatch, spec):
    _gpus(monkeypatch, 1)
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        D.parse_device(spec)


def test_two_jobs_on_two_gpus_get_one_each(monkeypatch, caplog):
    _gpus(monkeypatch, 2)
    with caplog.at_level(logging.INFO, logger=D.__name__):
        slots = D.assign_gpus(2, "cuda")
    assert slots == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert "one run per GPU" in caplog.text


def test_more_jobs_than_gpus_are_capped_with_a_warning(monkeypatch, caplog):
    _gpus(monkeypatch, 2)
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        slots = D.assign_gpus(5, "auto")
    assert slots == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert "--jobs 5 with 2 GPU(s)" in caplog.text and "running 2 at once" in caplog.text


def test_the_sweeps_own_visible_devices_are_handed_down(monkeypatch):
    _gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-abc")
    assert D.assign_gpus(2, "cuda") == [{"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}]
    # cuda:N names the N-th visible GPU: every run goes there, one at a time.
    assert D.assign_gpus(3, "cuda:1") == [{"CUDA_VISIBLE_DEVICES": "GPU-abc"}]


def test_no_slots_on_cpu_or_for_one_job(monkeypatch):
    _gpus(monkeypatch, 0)
    assert D.assign_gpus(4, "auto") is None
    assert D.assign_gpus(4, "cpu") is None
    _gpus(monkeypatch, 2)
    assert D.assign_gpus(1, "cuda") is None
    assert D.assign_gpus(4, "cpu") is None
    _gpus(monkeypatch, 0)
    with pytest.raises(UsageError):
        D.assign_gpus(2, "cuda")


def test_slots_reach_the_child_and_are_not_shared(monkeypatch, tmp_path):
    seen: list[str] = []
    inside = threading.Barrier(2, timeout=10)

    def fake_run(cmd, env=None, **kw):
        assert cmd[-2:] == ["--device", "cuda"]  # cuda:1 for the sweep is the child's only GPU, cuda:0
        seen.append(env["CUDA_VISIBLE_DEVICES"])
        inside.wait()  # both children alive at once: they must hold different slots
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(X.subprocess, "run", fake_run)
    monkeypatch.setattr(X, "canonical_json", lambda cfg: "{}")
    slots = X.EnvSlots([{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}])
    kw = {"slots": slots, "device": "cuda:1"}
    threads = [threading.Thread(target=X.run_in_subprocess, args=(None, tmp_path), kwargs=kw) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == ["0", "1"]
    # Both slots are back: two more children can hold them.
    with slots.hold() as a, slots.hold() as b:
        assert {a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}


def test_without_slots_the_device_is_passed_as_given(monkeypatch, tmp_path):
    cmds: list[list[str]] = []
    monkeypatch.setattr(X.subprocess, "run", lambda cmd, **kw: cmds.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(X, "canonical_json", lambda cfg: "{}")
    X.run_in_subprocess(None, tmp_path, device="cuda:1")
    X.run_in_subprocess(None, tmp_path)
    assert cmds[0][-2:] == ["--device", "cuda:1"] and "--device" not in cmds[1]


def test_child_env_keeps_the_thread_split_and_adds_the_slot(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(X, "cpu_count", lambda: 16)
    env = X.child_env(2, {"CUDA_VISIBLE_DEVICES": "1"})
    assert env["OMP_NUM_THREADS"] == "8" and env["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert "CUDA_VISIBLE_DEVICES" not in X.child_env(2)


def test_peak_memory_has_one_definition_per_device(monkeypatch):
    cpu = D.peak_memory(torch.device("cpu"))
    assert cpu.kind in D.PEAK_MEMORY_DEFINITIONS and cpu.peak() > 0
    assert "ru_maxrss" in D.peak_memory_definition(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    gpu = D.peak_memory(torch.device("cuda"))
    assert gpu.kind in D.PEAK_MEMORY_DEFINITIONS
    assert "max_memory_allocated" in D.peak_memory_definition(torch.device("cuda"))
    assert "max_memory_allocated" in D.PEAK_MEMORY_LEGEND and "ru_maxrss" in D.PEAK_MEMORY_LEGEND


@pytest.mark.parametrize("var", ["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"])
def test_multi_process_launch_is_refused(monkeypatch, var):
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})  # as in a fresh process under the launcher
    for v in D._WORLD_SIZE_VARS:
        monkeypatch.delenv(v, raising=False)
    D.refuse_multiprocess()  # started plainly: nothing to refuse
    monkeypatch.setenv(var, "1")
    D.refuse_multiprocess()
    monkeypatch.setenv(var, "4")
    with pytest.raises(UsageError) as e:
        D.refuse_multiprocess()
    msg = str(e.value)
    assert "started as 4 processes" in msg and "--jobs" in msg and "--executor ray" in msg and "\n" not in msg


@pytest.fixture
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # later tests build their own Accelerator


def test_make_accelerator_switches_precision_within_one_process(_fresh_accelerate_state):
    from peftbench.harness.run.precision import PrecisionChoice

    cpu = torch.device("cpu")
    bf16 = D.make_accelerator(cpu, PrecisionChoice("bf16", "forced: precision=bf16"))
    assert bf16.device.type == "cpu" and bf16.mixed_precision == "bf16"
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # accelerate alone would refuse this second precision in the same process (inline runs, tests).
    fp32 = D.make_accelerator(cpu, PrecisionChoice("fp32", "forced: precision=fp32"))
    assert fp32.mixed_precision == "no"
    with fp32.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
