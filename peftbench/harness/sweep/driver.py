"""Sweeps: expand tasks x methods x budgets x seeds into resolved configs, skip what is done, run the rest.

Faults a sweep survives: a run that crashes or is killed (its record is missing or failed, so the next sweep
reruns it), the sweep itself killed or interrupted (rerun the same command), two sweeps on one results
directory (a lock per config: whoever holds it runs it, the other waits and then finds it done), and
unreadable or old-schema records (set aside, rerun)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench import registry
from peftbench.config import RunConfig, parse_budget
from peftbench.errors import UsageError
from peftbench.harness.run.data import check_data
from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.harness.sweep.executors import EnvSlots, Executor, InlineExecutor, LocalExecutor
from peftbench.records import load_record, lock_holder, record_path, release_lock, set_aside, try_lock

log = logging.getLogger(__name__)

StatSig = tuple[int, int, int]  # (inode, size, mtime_ns): tells whether a record changed since planning


def _stat(path: Path) -> StatSig | None:
    try:  # not exists() then stat(): another sweep may set the file aside in between
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    record: Path
    done: bool
    status: str  # "ok", "failed", "missing", or why a record on disk is unusable
    seen: StatSig | None = None

    @property
    def label(self) -> str:
        return self.config.label


def expand(
    tasks: Iterable[str], methods: Iterable[str], budgets: Iterable[str | None], seeds: Iterable[int], **common: Any
) -> list[RunRequest]:
    """The grid. Unbudgeted methods (full fine-tuning) run once per task and seed, whatever the budgets."""
    budgets = list(budgets) or [None]
    for b in budgets:  # the spelling of every budget first, so a typo is not hidden behind an unreachable budget
        if b is not None:
            parse_budget(b, base_params=1 << 60)
    out: list[RunRequest] = []
    for task in tasks:
        for method in methods:
            budgeted = registry.adapters.get(method).budgeted
            for budget in budgets if budgeted else [None]:
                for seed in seeds:
                    out.append(RunRequest(task=task, method=method, seed=seed, budget=budget, **common))
    return out


def plan(requests: list[RunRequest], results: Path) -> list[PlannedRun]:
    """Resolve every config (names, settings, budgets, data) before anything runs, so bad input fails fast."""
    planned: list[PlannedRun] = []
    seen: set[str] = set()
    checked: set[tuple[str, str]] = set()
    for req in requests:
        cfg = resolve(req)
        if (cfg.task, cfg.data) not in checked:
            check_data(cfg.task, cfg.data)
            checked.add((cfg.task, cfg.data))
        if cfg.config_hash in seen:
            continue
        seen.add(cfg.config_hash)
        path = record_path(results, cfg.task, cfg.method, cfg.config_hash)
        sig = _stat(path)
        rec = load_record(path)
        if rec.record is not None:
            status = rec.record.status
        else:
            status = rec.problem or "missing"
            if rec.problem != "missing":
                log.warning("%s: %s; it will be set aside and rerun", path, rec.problem)
        planned.append(PlannedRun(cfg, path, rec.ok, status, sig))
    return planned


# --- the sweep ------------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    ran: int = 0
    skipped: int = 0  # done before the sweep started
    elsewhere: int = 0  # finished by another process while this sweep waited for it
    failed: list[str] = field(default_factory=list)  # "label: why", for people
    why_failed: dict[str, str] = field(default_factory=dict)  # config hash -> why, for code

    def exit_code(self, noun: str = "run") -> int:
        """0, or 1 after listing the failed runs on stderr: how `sweep` and `tune` end."""
        if not self.failed:
            return 0
        print(f"{len(self.failed)} {noun}(s) failed:", file=sys.stderr)
        for f in self.failed:
            print(f"  {f}", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class _Result:
    kind: str  # "ran", "elsewhere", "deferred"
    code: int = 0
    error: str | None = None


def _why(code: int, error: str | None, wrote_record: bool = False) -> str:
    if error:
        return error
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"run process killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    if wrote_record:
        return f"run process exited with code {code} after writing its record"
    return f"run process exited with code {code} and wrote no record"


class _Progress:
    """Runs done/total, the runs in flight, elapsed and ETA: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.running: dict[str, str] = {}
        self._lock = threading.Lock()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)

    def _postfix(self) -> None:
        if self.bar is not None:
            labels = sorted(self.running.values())
            self.bar.set_postfix_str(("running: " + ", ".join(labels)) if labels else "")

    def started(self, p: PlannedRun) -> None:
        with self._lock:
            self.running[p.config.config_hash] = p.label
            self._postfix()

    def finished(self, p: PlannedRun, status: str) -> None:
        with self._lock:
            self.running.pop(p.config.config_hash, None)
            self.done += 1
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            if self.bar is not None:
                self.bar.update(1)
                self._postfix()
            # Under a bar the same facts are on screen; log lines would tear it.
            line = f"[{self.done}/{self.total}] {p.label}: {status}; elapsed {_hms(elapsed)}, ETA {_hms(eta)}"
            log.log(logging.DEBUG if self.bar is not None else logging.INFO, line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Sweep:
    def __init__(self, results: Path, executor: Executor, jobs: int, progress: _Progress) -> None:
        self.results = results
        self.executor = executor
        self.jobs = jobs
        self.progress = progress
        self.stop = threading.Event()

    def stop_all(self) -> None:
        """Stop every run in flight; a second Ctrl-C meanwhile must not leave them running."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.stop.set()
            self.executor.stop()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def _wait_lock(self, p: PlannedRun) -> int | None:
        # Polling, not a blocking flock: a blocked thread could not be told to give up on Ctrl-C.
        log.info("%s is being run by another process (pid %s); waiting for it", p.label, lock_holder(p.record))
        while not self.stop.is_set():
            fd = try_lock(p.record)
            if fd is not None:
                return fd
            time.sleep(0.2)
        return None

    def attempt(self, p: PlannedRun, wait_if_locked: bool) -> _Result:
        fd = try_lock(p.record)
        if fd is None:
            if not wait_if_locked:
                return _Result("deferred")
            fd = self._wait_lock(p)
            if fd is None:
                raise KeyboardInterrupt
        try:
            # Under the lock, look again: a record written since planning means another process ran this
            # config meanwhile. (A record unchanged since planning is rerun: the caller chose to, e.g. --fresh.)
            rec = load_record(p.record)
            if rec.record is not None and _stat(p.record) != p.seen:
                return _Result("elsewhere", 0 if rec.ok else 1)
            if rec.problem not in (None, "missing"):
                log.warning("%s: %s; moved to %s", p.record, rec.problem, set_aside(p.record))
            self.progress.started(p)
            try:
                code = self.executor.run(p.config, self.results, True, self.jobs, fd)
                error = None
            except Exception as e:  # inline: one broken run must not end the sweep
                if self.stop.is_set():
                    raise
                code, error = 2 if isinstance(e, UsageError) else 1, f"{type(e).__name__}: {e}"
            return _Result("ran", code, error)
        finally:
            release_lock(fd)

    def finish(self, p: PlannedRun, r: _Result, outcome: SweepOutcome, on_done) -> None:
        if r.kind == "elsewhere":
            outcome.elsewhere += 1
        else:
            outcome.ran += 1
        rec = load_record(p.record)
        ok = r.code == 0 and rec.ok
        if not ok:
            why = (rec.record.error if rec.record else None) or _why(r.code, r.error, rec.record is not None)
            outcome.failed.append(f"{p.label}: {why}")
            outcome.why_failed[p.config.config_hash] = str(why)
            log.warning("run failed: %s: %s", p.label, why)
        self.progress.finished(p, "ok" if ok else "failed")
        if on_done is not None:
            on_done(p, r.code)

    def run_serial(self, todo: list[PlannedRun], outcome: SweepOutcome, on_done) -> None:
        deferred = []
        for p in todo:
            r = self.attempt(p, wait_if_locked=False)
            if r.kind == "deferred":
                deferred.append(p)
            else:
                self.finish(p, r, outcome, on_done)
        for p in deferred:  # locked by another process on the first pass: wait for it now
            self.finish(p, self.attempt(p, wait_if_locked=True), outcome, on_done)

    def run_parallel(self, todo: list[PlannedRun], outcome: SweepOutcome, on_done) -> None:
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="sweep")
        try:
            futures: dict[Future, PlannedRun] = {pool.submit(self.attempt, p, False): p for p in todo}
            waiting: list[PlannedRun] = []
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = futures.pop(fut)
                    r = fut.result()
                    if r.kind == "deferred":
                        waiting.append(p)
                    else:
                        self.finish(p, r, outcome, on_done)
                # A config locked by another process is waited for only when a slot is free.
                while waiting and len(futures) < self.jobs:
                    p = waiting.pop(0)
                    futures[pool.submit(self.attempt, p, True)] = p
        except BaseException:
            self.stop_all()  # before shutdown: the worker threads wait on the children being stopped
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _executor(
    name: str,
    ray_address: str | None,
    ray_resources: dict | None,
    device: str | None,
    gpu_envs: list | None,
    save_adapter: bool = False,
    log_to: tuple[str, ...] = (),
) -> Executor:
    if name == "ray":
        from peftbench.harness.sweep.ray_executor import RayExecutor

        return RayExecutor(ray_address, ray_resources or {}, save_adapter, log_to)
    if name == "inline":
        return InlineExecutor(device or "auto", save_adapter, log_to)
    return LocalExecutor(EnvSlots(gpu_envs) if gpu_envs else None, device, save_adapter, log_to)


def run_sweep(
    planned: list[PlannedRun],
    results: Path,
    jobs: int = 1,
    executor: str = "local",
    progress: bool = True,
    ray_address: str | None = None,
    ray_resources: dict | None = None,
    on_done: Callable[[PlannedRun, int], None] | None = None,
    device: str | None = None,
    gpu_envs: list[dict[str, str]] | None = None,
    save_adapter: bool = False,
    log_to: tuple[str, ...] = (),
) -> SweepOutcome:
    """Run what is not done. On Ctrl-C (KeyboardInterrupt) the running children are stopped, no record is
    written for them, and the KeyboardInterrupt propagates; rerunning the same sweep finishes the rest.
    `save_adapter`: every run it trains saves its adapter beside its record (`run --save-adapter`)."""
    todo = [p for p in planned if not p.done]
    outcome = SweepOutcome(skipped=len(planned) - len(todo))
    if not todo:
        return outcome
    runner = _executor(executor, ray_address, ray_resources, device, gpu_envs, save_adapter, log_to)
    sweep = _Sweep(results, runner, runner.slots(jobs), _Progress(len(todo), progress))
    start = time.perf_counter()
    # `kill <pid>` (a scheduler's stop) ends any command running a sweep (sweep, tune, regress) like Ctrl-C: its
    # runs are stopped, not orphaned in their own sessions.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
    try:
        if sweep.jobs <= 1:
            sweep.run_serial(todo, outcome, on_done)
        else:
            sweep.run_parallel(todo, outcome, on_done)
    except BaseException:
        sweep.stop_all()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sweep.progress.close()
        runner.close()
    took, o = time.perf_counter() - start, outcome
    log.info("sweep: %d run, %d skipped, %d done elsewhere, %d failed in %.0f s", o.ran, o.skipped, o.elsewhere,
             len(o.failed), took)  # fmt: skip
    return outcome
