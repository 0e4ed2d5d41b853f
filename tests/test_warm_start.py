"""Sweep runs forked from the warm server (harness/sweep/warm.py) are the same runs as fresh interpreters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peftbench.harness.cli import main
from peftbench.harness.sweep import warm

SETS = ("train_rows=48", "eval_rows=24", "batch_size=16", "max_length=32", "eval_batch_size=32")

pytestmark = pytest.mark.skipif(not warm.available(), reason="no forkserver on this platform")


def _sweep(model: Path, results: Path) -> int:
    sets = [a for s in SETS for a in ("--set", s)]
    return main(["sweep", "--tasks", "sst2", "--methods", "lora,full", "--seeds", "0,1", "--model", str(model),
                 "--results", str(results), "--quiet", "--no-leaderboard", "--jobs", "2", *sets])  # fmt: skip


def _records(results: Path) -> dict[str, dict]:
    out = {}
    for f in sorted((results / "runs").rglob("*.json")):
        rec = json.loads(f.read_text())
        out[f.name] = rec
    return out


def test_warm_and_cold_runs_write_the_same_records(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _sweep(tiny_model_dir, tmp_path / "warm") == 0
    monkeypatch.setenv("PEFTBENCH_WARM_START", "0")
    assert not warm.available()
    assert _sweep(tiny_model_dir, tmp_path / "cold") == 0
    hot, cold = _records(tmp_path / "warm"), _records(tmp_path / "cold")
    assert len(hot) == 4 and hot.keys() == cold.keys()  # same config hashes
    for name in hot:
        a, b = hot[name], cold[name]
        assert a["status"] == b["status"] == "ok"
        assert a["metrics"]["primary"] == b["metrics"]["primary"]
        assert a["train"]["loss_history"] == b["train"]["loss_history"]
        assert a["env"]["torch_threads"] == b["env"]["torch_threads"] == 1


def test_a_failing_warm_run_returns_its_exit_code(tmp_path):
    proc = warm.WarmProcess(["run", "--resolved", str(tmp_path / "none.json"), "--results", str(tmp_path)], {})
    assert proc.wait(timeout=120) != 0  # the child's error is its exit code, not a hang or a dead sweep
    assert proc.poll() == proc.wait()


def test_a_warm_run_holds_its_lock_and_stops_on_terminate(tiny_model_dir, tmp_path):
    import fcntl
    import signal
    import time

    from peftbench.config import canonical_json
    from peftbench.harness.run.plan import RunRequest, resolve

    long = SETS + ("train_rows=5000", "max_length=64", "epochs=50")
    cfg = resolve(RunRequest(task="sst2", method="lora", seed=0, model=str(tiny_model_dir), sets=long))
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(canonical_json(cfg))
    lock_path = tmp_path / "cfg.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc = warm.WarmProcess(["run", "--resolved", str(cfg_file), "--results", str(tmp_path), "--quiet"],
                            dict(os.environ), fd)  # fmt: skip
    os.close(fd)  # from here only the run holds the lock
    time.sleep(1.0)
    other = os.open(lock_path, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=60) == -signal.SIGTERM
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the run
    os.close(other)
    assert not list((tmp_path / "runs").rglob("*.json"))  # a stopped run writes no record
