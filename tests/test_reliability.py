"""Faults a sweep survives, losing nothing: killed runs, killed or interrupted sweeps, diverging or crashing
runs, two sweeps on one results directory, corrupt and old-schema records. Real processes and signals where
the fault is a process fault; a tiny BERT and a few steps everywhere."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from peftbench import registry
from peftbench.adapters.lora import LoraAdapter
from peftbench.harness.cli import main
from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.harness.sweep import driver as sweep_mod
from peftbench.harness.sweep import executors
from peftbench.records import (
    SCHEMA_VERSION,
    DataInfo,
    Params,
    Perf,
    RunRecord,
    atomic_write_text,
    load_record,
    lock_path,
    record_path,
    release_lock,
    try_lock,
    write_record,
)

# Trains real runs in child processes (or loads the embedded MiniLM): the full suite, not make test-fast.
pytestmark = pytest.mark.slow

SETS = ("train_rows=48", "eval_rows=24", "batch_size=16", "max_length=32", "eval_batch_size=32")
INTERRUPTED = re.compile(r"^interrupted: (\d+) of (\d+) runs finished, (\d+) left; rerun the same command to finish$")
SUMMARY = re.compile(r"sweep: (\d+) run, (\d+) skipped, (\d+) done elsewhere, (\d+) failed")


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared with other jobs: a second intra-op thread only adds contention to these tiny models.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sets(*extra: str) -> list[str]:
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def _sweep(model: Path, results: Path, seeds: str, *extra: str, methods: str = "lora") -> list[str]:
    return ["sweep", "--tasks", "sst2", "--methods", methods, "--seeds", seeds, "--model", str(model),
            "--results", str(results), "--quiet", "--no-leaderboard", *extra]  # fmt: skip


def _record(model: Path, results: Path, seed: int, *extra: str, method: str = "lora") -> Path:
    cfg = resolve(RunRequest(task="sst2", method=method, seed=seed, model=str(model), sets=SETS + extra))
    return results / "runs" / "sst2" / method / f"{cfg.config_hash}.json"


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "peftbench", *args]


def _env(threads: str | None = "1") -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def _default_sigint() -> None:
    # A test runner started in the background may ignore SIGINT, and children inherit that; Ctrl-C must work.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, state, command line) of every live process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        out[int(d.name)] = (int(fields[1]), fields[0], cmdline)
    return out


def _run_children(pid: int) -> list[int]:
    """Live run processes of the sweep `pid`: `peftbench run --resolved` (past exec) whose parent is `pid`, or
    the processes its warm server (a forkserver child of `pid`) forked."""
    procs = _processes()
    servers = {p for p, (pp, _, cmd) in procs.items() if pp == pid and b"forkserver" in cmd}
    return [
        p
        for p, (pp, state, cmd) in procs.items()
        if state not in ("Z", "X") and ((pp == pid and b"--resolved" in cmd) or pp in servers)
    ]


def _wait_for(cond, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _json_records(results: Path) -> list[Path]:
    return sorted((results / "runs").glob("*/*/*.json"))


# --- process faults ---------------------------------------------------------------------------------------


def test_run_killed_mid_training_leaves_no_record_and_the_rerun_redoes_only_it(tiny_model_dir, tmp_path, caplog):
    results = tmp_path / "res"
    steps = "max_steps=40"
    assert main([*_sweep(tiny_model_dir, results, "0", "--executor", "inline"), *_sets(steps)]) == 0
    rec0, rec1 = (_record(tiny_model_dir, results, s, steps) for s in (0, 1))
    before = _snapshot(rec0)

    run = _cli("-v", "run", "--task", "sst2", "--method", "lora", "--seed", "1", "--model", str(tiny_model_dir),
               "--results", str(results), "--quiet", *_sets(steps))  # fmt: skip
    proc = subprocess.Popen(run, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    guard = threading.Timer(240, proc.kill)
    guard.start()
    try:
        started = False
        for line in proc.stderr:  # the runner logs (debug) when training starts
            if "training starts" in line:
                proc.send_signal(signal.SIGKILL)
                started = True
                break
        proc.communicate()
    finally:
        guard.cancel()
    assert started and proc.returncode == -signal.SIGKILL
    assert not rec1.exists(), "the run finished before it was killed: make it longer"
    assert [p.name for p in _json_records(results)] == [rec0.name]  # nothing half-written under a record name
    fd = try_lock(rec1)  # the kernel dropped the dead run's lock
    assert fd is not None
    release_lock(fd)

    caplog.set_level(logging.INFO, logger="peftbench")
    assert main([*_sweep(tiny_model_dir, results, "0,1", "--executor", "inline"), *_sets(steps)]) == 0
    assert _snapshot(rec0) == before
    assert load_record(rec1).ok
    assert SUMMARY.search(caplog.text).groups() == ("1", "1", "0", "0")


@pytest.mark.parametrize("warm_start", ["1", "0"])
def test_interrupted_sweep_stops_its_runs_and_a_killed_sweep_is_finished_by_the_rerun(
    tiny_model_dir, tmp_path, caplog, warm_start
):
    results = tmp_path / "res"
    steps = "max_steps=30"
    argv = [*_sweep(tiny_model_dir, results, "0,1,2", "--jobs", "2"), *_sets(steps)]
    assert main([*_sweep(tiny_model_dir, results, "0", "--executor", "inline"), *_sets(steps)]) == 0
    recs = [_record(tiny_model_dir, results, s, steps) for s in (0, 1, 2)]
    before = _snapshot(recs[0])
    threads = max(1, executors.cpu_count() // 2)
    env = _env(threads=None)  # the sweep chooses the children's thread count
    env["PEFTBENCH_WARM_START"] = warm_start
    started: list[int] = []
    try:
        # Ctrl-C: the runs in flight are stopped, nothing is recorded for them, one line says what is left.
        with open(tmp_path / "a.log", "w") as out:
            a = subprocess.Popen(_cli(*argv), stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_default_sigint)
        started += [a.pid]
        kids = _wait_for(lambda: _run_children(a.pid), "sweep A to start runs")
        started += kids
        if warm_start == "0":  # a forked run sets its environment after start; its record shows the threads
            environ = Path(f"/proc/{kids[0]}/environ").read_bytes().split(b"\0")
            assert f"OMP_NUM_THREADS={threads}".encode() in environ
        a.send_signal(signal.SIGINT)
        assert a.wait(timeout=120) == 130
        last = (tmp_path / "a.log").read_text().strip().splitlines()[-1]
        assert INTERRUPTED.match(last).groups() == ("1", "3", "2"), last
        _wait_for(lambda: not any(_alive(k) for k in kids), "the stopped runs to be gone", timeout=10)
        assert [p.name for p in _json_records(results)] == [recs[0].name]

        # SIGKILL: the sweep cannot clean up; its run keeps the config locked until it is done.
        with open(tmp_path / "b.log", "w") as out:
            b = subprocess.Popen(_cli(*argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        started += [b.pid]
        started += _wait_for(lambda: _run_children(b.pid), "sweep B to start runs")
        b.kill()
        b.wait()
        orphaned = []
        for rec in recs[1:]:
            fd = try_lock(rec)
            if fd is None:
                orphaned.append(rec)
            else:
                release_lock(fd)
        assert orphaned

        caplog.set_level(logging.INFO, logger="peftbench")
        assert main([*argv, "--executor", "inline"]) == 0
        assert "being run by another process" in caplog.text
        assert _snapshot(recs[0]) == before
        assert all(load_record(r).ok for r in recs)
        for rec in orphaned:  # finished by the orphan, with the thread count the sweep gave it
            assert load_record(rec).record.env["torch_threads"] == threads
        ran, skipped, elsewhere, failed = map(int, SUMMARY.search(caplog.text).groups())
        assert (ran + elsewhere, skipped, failed) == (2, 1, 0) and elsewhere >= 1
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_two_sweeps_on_one_results_directory(tiny_model_dir, tmp_path):
    results = tmp_path / "res"
    argv = [*_sweep(tiny_model_dir, results, "0,1,2", "--executor", "inline"), *_sets("max_steps=10")]
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    procs = []
    for log_file in logs:
        with open(log_file, "w") as out:
            procs.append(subprocess.Popen(_cli(*argv), stdout=out, stderr=subprocess.STDOUT, env=_env()))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [f.read_text() for f in logs]
    assert codes == [0, 0], texts
    recs = _json_records(results)
    assert len(recs) == 3 and all(load_record(r).ok for r in recs)
    assert sorted(load_record(r).record.config.seed for r in recs) == [0, 1, 2]
    names = {p.name for p in (results / "runs" / "sst2" / "lora").iterdir()}
    assert names == {n for r in recs for n in (r.name, r.with_suffix(".preds.jsonl").name, r.name + ".lock")}
    ran = 0
    for text in texts:
        m = SUMMARY.search(text)
        if m is None:  # the other sweep had finished everything before this one planned
            assert "3 configs, 0 to run, 3 already done" in text, text
        else:
            ran += int(m.group(1))
            assert m.group(4) == "0"
    assert ran == 3  # every config ran exactly once between the two


def test_sigterm_stops_a_sweep_like_ctrl_c(tiny_model_dir, tmp_path, monkeypatch, capsys):
    def stuck(cfg, results, quiet=True, **kw):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        time.sleep(60)
        raise AssertionError("SIGTERM did not interrupt the sweep")

    monkeypatch.setattr(executors, "run_in_subprocess", stuck)
    before = signal.getsignal(signal.SIGTERM)
    assert main([*_sweep(tiny_model_dir, tmp_path, "0,1"), *_sets()]) == 130
    assert INTERRUPTED.match(capsys.readouterr().err.strip().splitlines()[-1]).groups() == ("0", "2", "2")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("warm_start", ["1", "0"])
def test_sigterm_to_tune_stops_its_runs_instead_of_orphaning_them(tiny_model_dir, tmp_path, warm_start):
    # Every command that runs a sweep, not only `sweep`: a killed `tune` or `regress` must not leave its runs
    # (in their own sessions) training on, writing records nobody waits for.
    argv = ["tune", "--tasks", "sst2", "--methods", "lora", "--grid", "lr=1e-3,2e-3", "--dev-rows", "40",
            "--model", str(tiny_model_dir), "--profile", "quick", "--results", str(tmp_path / "res"),
            "--recipe", str(tmp_path / "recipe.json"), "--quiet", "--budget", "2K", "--jobs", "2",
            *_sets("max_steps=400")]  # fmt: skip
    env = _env()
    env["PEFTBENCH_WARM_START"] = warm_start
    with open(tmp_path / "t.log", "w") as out:
        proc = subprocess.Popen(_cli(*argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    kids: list[int] = []
    try:
        kids = _wait_for(lambda: _run_children(proc.pid), "tune to start runs")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130, (tmp_path / "t.log").read_text()[-2000:]
        _wait_for(lambda: not any(_alive(k) for k in kids), "the stopped runs to be gone", timeout=10)
        assert not _json_records(tmp_path / "res")
        assert "interrupted" in (tmp_path / "t.log").read_text()
    finally:
        for pid in [proc.pid, *kids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_config_locked_by_another_process_is_waited_for_not_rerun(tiny_model_dir, tmp_path, monkeypatch):
    results = tmp_path / "res"
    planned = sweep_mod.plan(
        sweep_mod.expand(["sst2"], ["lora"], [], [0, 1], model=str(tiny_model_dir), sets=SETS), results
    )
    calls: list[int] = []

    def fake_run(cfg, results, quiet=True, **kw):
        calls.append(cfg.seed)
        _write_ok(results, cfg)
        return 0

    monkeypatch.setattr(executors, "run_in_subprocess", fake_run)
    held = try_lock(planned[0].record)  # "another process" runs seed 0
    box = {}
    worker = threading.Thread(target=lambda: box.update(out=sweep_mod.run_sweep(planned, results, progress=False)))
    worker.start()
    _wait_for(lambda: calls == [1], "the free config to run", timeout=30)
    assert worker.is_alive()  # still waiting for seed 0
    _write_ok(results, planned[0].config)
    release_lock(held)
    worker.join(timeout=30)
    assert calls == [1]
    out = box["out"]
    assert (out.ran, out.elsewhere, out.failed) == (1, 1, [])


def test_a_done_config_the_caller_marks_not_done_is_rerun(tiny_model_dir, tmp_path, monkeypatch):
    # regress --fresh replans done configs as not done: an ok record unchanged since planning is no one else's.
    results = tmp_path / "res"
    requests = sweep_mod.expand(["sst2"], ["lora"], [], [0], model=str(tiny_model_dir), sets=SETS)
    calls: list[int] = []

    def fake_run(cfg, results, quiet=True, **kw):
        calls.append(cfg.seed)
        _write_ok(results, cfg)
        return 0

    monkeypatch.setattr(executors, "run_in_subprocess", fake_run)
    sweep_mod.run_sweep(sweep_mod.plan(requests, results), results, progress=False)
    [done] = sweep_mod.plan(requests, results)
    assert done.done
    out = sweep_mod.run_sweep([dataclasses.replace(done, done=False)], results, progress=False)
    assert calls == [0, 0] and (out.ran, out.elsewhere) == (1, 0)


def test_run_refuses_a_config_another_process_is_running(tiny_model_dir, tmp_path, capsys):
    rec = _record(tiny_model_dir, tmp_path, 0)
    held = try_lock(rec)
    try:
        argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--results",
                str(tmp_path), "--quiet", *_sets()]  # fmt: skip
        assert main(argv) == 2
    finally:
        release_lock(held)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: another peftbench process") and "\n" not in err
    assert not rec.exists()


def _write_ok(results: Path, cfg) -> None:
    """What a finished run leaves: the smallest record load_record accepts as ok."""
    rec = RunRecord.start(cfg, DataInfo(cfg.data, cfg.data_hash, 1, {"validation": 1}), "accuracy", 1)
    rec = rec.finish({"accuracy": 0.5}, [], Params(0, 0, 0, 0), Perf(), [], {})
    write_record(record_path(results, cfg.task, cfg.method, cfg.config_hash), rec)


# --- runs that fail -----------------------------------------------------------------------------------------


class _InfLoss(LoraAdapter):
    """Plugin whose regulariser blows up on its third optimizer step."""

    name = "infloss"

    def extra_loss(self, model):
        self.calls = getattr(self, "calls", 0) + 1
        return torch.tensor(float("inf")) if self.calls >= 3 else None


class _Boom(LoraAdapter):
    """Plugin that runs out of memory (or has a bug) in its step hook."""

    name = "boom"

    def on_step_end(self, model, step):
        if step == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setitem(registry.adapters._extra, "infloss", _InfLoss)
    monkeypatch.setitem(registry.adapters._extra, "boom", _Boom)


def test_diverging_and_crashing_runs_are_recorded_and_the_sweep_goes_on(plugins, tiny_model_dir, tmp_path, capsys):
    results = tmp_path / "res"
    argv = [*_sweep(tiny_model_dir, results, "0", "--executor", "inline", methods="infloss,boom,lora"),
            *_sets("max_steps=4")]  # fmt: skip
    argv.remove("--no-leaderboard")
    assert main(argv) == 1
    out, err = capsys.readouterr()
    inf = load_record(_record(tiny_model_dir, results, 0, "max_steps=4", method="infloss")).record
    assert inf.status == "failed" and inf.diagnostics["diverged_at_step"] == 2
    assert "training diverged at step 2" in inf.error and "extra loss inf" in inf.error
    boom = load_record(_record(tiny_model_dir, results, 0, "max_steps=4", method="boom")).record
    assert boom.status == "failed"
    assert boom.error == "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert "on_step_end" in boom.traceback
    assert load_record(_record(tiny_model_dir, results, 0, "max_steps=4")).ok  # the sweep went on
    assert "2 run(s) failed" in err and "boom seed 0: RuntimeError: CUDA out of memory" in err
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for method in ("infloss", "boom"):
        assert "missing" in rows[method] and "0 (1 failed)" in rows[method], out
    assert "missing" not in rows["lora"]


def test_loss_overflow_from_a_huge_learning_rate_is_recorded(tiny_model_dir, tmp_path, capsys):
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--results",
            str(tmp_path), "--quiet", *_sets("max_steps=4", "lr=1e30")]  # fmt: skip
    assert main(argv) == 1
    rec = load_record(_record(tiny_model_dir, tmp_path, 0, "max_steps=4", "lr=1e30")).record
    step = rec.diagnostics["diverged_at_step"]
    assert rec.status == "failed" and 0 <= step < 4
    assert rec.error.startswith(f"training diverged at step {step}: loss is")
    assert "run failed: training diverged" in capsys.readouterr().err


def test_a_run_process_that_dies_is_reported_and_the_sweep_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    results = tmp_path / "res"
    planned = sweep_mod.plan(
        sweep_mod.expand(["sst2"], ["lora"], [], [0, 1], model=str(tiny_model_dir), sets=SETS), results
    )

    def oom_killed_then_fine(cfg, results, quiet=True, **kw):
        if cfg.seed == 0:
            return -signal.SIGKILL  # what the kernel's OOM killer leaves
        _write_ok(results, cfg)
        return 0

    monkeypatch.setattr(executors, "run_in_subprocess", oom_killed_then_fine)
    out = sweep_mod.run_sweep(planned, results, progress=False)
    assert out.ran == 2 and out.failed == ["sst2/lora seed 0: run process killed by SIGKILL (out of memory?)"]


# --- records on disk ----------------------------------------------------------------------------------------


def test_corrupt_and_old_schema_records_are_reported_set_aside_and_rerun(tiny_model_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="peftbench")
    results = tmp_path / "res"
    argv = [*_sweep(tiny_model_dir, results, "0,1,2", "--executor", "inline"), *_sets("max_steps=2")]
    assert main(argv) == 0
    recs = [_record(tiny_model_dir, results, s, "max_steps=2") for s in (0, 1, 2)]
    truncated = recs[0].read_bytes()[:200]
    recs[0].write_bytes(truncated)
    old = json.loads(recs[1].read_text())
    old["schema_version"] = 0
    old["metrics"] = {"acc": 0.99}  # what an older layout might look like: must not be read as ours
    recs[1].write_text(json.dumps(old))
    kept = _snapshot(recs[2])
    stray = recs[0].with_name("0123456789abcdef.json")
    stray.write_bytes(b"\x80\x81 not json")

    assert main(["leaderboard", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| lora" in out and "| 1 " in out  # only the good record counts
    for path, problem in ((recs[0], "unreadable record"), (recs[1], "schema_version 0"), (stray, "unreadable")):
        assert re.search(re.escape(str(path)) + r": .*" + problem, caplog.text), caplog.text
    caplog.clear()

    assert main([*argv, "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "unreadable record" in table and "schema_version 0, this peftbench reads [1, 2]" in table

    assert main(argv) == 0
    assert all(load_record(r).ok for r in recs)
    assert _snapshot(recs[2]) == kept
    assert recs[0].with_name(recs[0].name + ".unusable").read_bytes() == truncated
    assert json.loads(recs[1].with_name(recs[1].name + ".unusable").read_text()) == old
    assert SUMMARY.search(caplog.text).groups() == ("2", "1", "0", "0")
    assert stray.read_bytes() == b"\x80\x81 not json"  # not ours to move: no config of this sweep points to it


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"schema_version": None}, "schema_version None"),
        ({"schema_version": SCHEMA_VERSION + 1}, f"schema_version {SCHEMA_VERSION + 1}"),
        ({"status": "done"}, "neither 'ok' nor 'failed'"),
        ({"config": "sst2/lora"}, "'config' is not a JSON object"),
        ({"params": [1, 2]}, "'params' is not a JSON object"),
        ({"config": {"config_hash": "ffffffffffffffff"}}, "not the one its name says"),
    ],
)
def test_records_of_another_shape_are_reported_not_misread(change, problem, tmp_path):
    from peftbench.harness.report.aggregate import runs_frame

    path = tmp_path / "runs" / "sst2" / "lora" / "0123456789abcdef.json"
    rec = {"schema_version": SCHEMA_VERSION, "status": "ok", "config": {"task": "sst2"}, "metrics": {}, "params": {}}
    atomic_write_text(path, json.dumps({**rec, **change}))
    loaded = load_record(path)
    assert loaded.record is None and problem in loaded.problem and not loaded.ok
    assert runs_frame(tmp_path).empty


def test_lock_is_exclusive_and_lives_beside_the_record(tmp_path):
    rec = tmp_path / "runs" / "sst2" / "lora" / "0123456789abcdef.json"
    fd = try_lock(rec)
    assert fd is not None and lock_path(rec).name == "0123456789abcdef.json.lock"
    assert try_lock(rec) is None
    release_lock(fd)
    fd = try_lock(rec)
    assert fd is not None
    release_lock(fd)


# --- threads and progress -----------------------------------------------------------------------------------


def test_runs_at_once_share_the_cores_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(executors, "cpu_count", lambda: 8)
    assert [executors.child_env(j)["OMP_NUM_THREADS"] for j in (1, 3, 16)] == ["8", "2", "1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert executors.child_env(4)["OMP_NUM_THREADS"] == "3"


def test_progress_names_every_run_in_flight(tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    results = tmp_path / "res"
    requests = sweep_mod.expand(["sst2"], ["lora"], [], [0, 1, 2], model=str(tiny_model_dir), sets=SETS)
    together = threading.Barrier(2)

    def fake_run(cfg, results, quiet=True, **kw):
        if cfg.seed < 2 and kw["jobs"] == 2:
            together.wait(timeout=30)  # seeds 0 and 1 are in flight at the same time
        _write_ok(results, cfg)
        return 0

    monkeypatch.setattr(executors, "run_in_subprocess", fake_run)
    out = sweep_mod.run_sweep(sweep_mod.plan(requests, results), results, jobs=2, progress=True)
    assert out.ran == 3 and not out.failed
    err = capsys.readouterr().err
    assert "running: sst2/lora seed 0, sst2/lora seed 1" in err and "3/3" in err

    caplog.set_level(logging.INFO, logger="peftbench")
    out = sweep_mod.run_sweep(sweep_mod.plan(requests, tmp_path / "quiet"), tmp_path / "quiet", progress=False)
    lines = re.findall(r"\[(\d)/3\] sst2/lora seed \d: ok; elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d", caplog.text)
    assert lines == ["1", "2", "3"]
