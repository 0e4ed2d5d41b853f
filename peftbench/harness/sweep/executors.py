"""Executors of one resolved run, behind one protocol: a fresh interpreter per run (local, the default), inline in
this process, or a Ray task (ray_executor.py). The sweep driver takes the config's lock, checks for a record, and
only then hands the config to an executor, whichever it is."""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from peftbench.config import RunConfig, canonical_json
from peftbench.harness.sweep import warm

log = logging.getLogger(__name__)


class Executor(Protocol):
    def slots(self, jobs: int) -> int:
        """How many runs this executor takes at once, given the user's --jobs."""

    def run(self, cfg: RunConfig, results: Path, quiet: bool, jobs: int, lock_fd: int) -> int:
        """One run, to completion; its exit code (0: an ok record was written). The caller holds the lock."""

    def stop(self) -> None:
        """Stop every run in flight (Ctrl-C); no record is written for them."""

    def close(self) -> None:
        """Release what the executor holds (a Ray instance it started)."""


@contextmanager
def resolved_file(config_json: str) -> Iterator[str]:
    """The resolved config in a temporary file for `peftbench run --resolved`, removed afterwards."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, prefix="peftbench-run-") as f:
        f.write(config_json)
    try:
        yield f.name
    finally:
        Path(f.name).unlink(missing_ok=True)


INTERPRETER = [sys.executable, "-m", "peftbench"]


def run_args(
    cfg_file: str, results: str, quiet: bool, save_adapter: bool = False, log_to: tuple[str, ...] = ()
) -> list[str]:
    """The `peftbench` arguments of one run: after INTERPRETER in a new process, or to `main` in a forked one."""
    args = ["run", "--resolved", cfg_file, "--results", results]
    if log_to:
        args += ["--log-to", ",".join(log_to)]
    return args + ["--quiet"] * quiet + ["--save-adapter"] * save_adapter


def run_command(
    cfg_file: str, results: str, quiet: bool, save_adapter: bool = False, log_to: tuple[str, ...] = ()
) -> list[str]:
    """The child process every out-of-process executor starts for one run."""
    return INTERPRETER + run_args(cfg_file, results, quiet, save_adapter, log_to)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_env(jobs: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a run process: runs at once share the cores instead of each taking all of them
    (two runs with every core each thrash a small machine). A thread count the user set is kept. `extra`
    (a job slot's GPU, see EnvSlots) goes on top."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // max(1, jobs)))
    env.update(extra or {})
    return env


class EnvSlots:
    """Per-slot environment overrides (devices.assign_gpus: one CUDA_VISIBLE_DEVICES per GPU). A run holds a
    slot while its process lives, so no two runs at once get the same GPU; with fewer slots than worker
    threads, the extra threads wait for a slot."""

    def __init__(self, envs: list[dict[str, str]]) -> None:
        if not envs:
            raise ValueError("EnvSlots needs at least one slot")
        self._free: queue.Queue[dict[str, str]] = queue.Queue()
        for env in envs:
            self._free.put(dict(env))
        self.size = len(envs)

    @contextmanager
    def hold(self) -> Iterator[dict[str, str]]:
        env = self._free.get()
        try:
            yield env
        finally:
            self._free.put(env)


class Children:
    """The run processes of one sweep, so an interrupted sweep stops them instead of leaving orphans."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[Any] = set()  # Popen or WarmProcess
        self.stopping = False

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen | None:
        return self.start(lambda: subprocess.Popen(cmd, **kw))

    def start(self, launch: Callable[[], Any]) -> Any:
        """`launch()` (a Popen or a WarmProcess) unless the sweep is stopping; None if it is."""
        with self._lock:  # no child may start after stop_all() has taken its list
            if self.stopping:
                return None
            proc = launch()
            self._procs.add(proc)
            return proc

    def discard(self, proc: Any) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self, grace: float = 10.0) -> None:
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_in_subprocess(
    cfg: RunConfig,
    results: Path,
    quiet: bool = True,
    *,
    jobs: int = 1,
    lock_fd: int | None = None,
    children: Children | None = None,
    slots: EnvSlots | None = None,
    device: str | None = None,
    save_adapter: bool = False,
    log_to: tuple[str, ...] = (),
) -> int:
    """One run in a fresh process (a new interpreter, or with a sweep's `children` one forked from the warm
    server, warm.py): a crash or out-of-memory kills that run only, and its peak memory is
    its own. The child inherits the config's lock, so the config stays locked while it lives. It gets its own
    session: Ctrl-C reaches the sweep, which stops it. With `slots`, it runs with a slot's environment (its
    GPU); `device` is passed on as `run --device`. Returns the child's exit code (negative: signal)."""
    if slots is not None:
        if device is not None and device.startswith("cuda"):
            device = "cuda"  # the slot's CUDA_VISIBLE_DEVICES shows the child its one GPU as cuda:0
        with slots.hold() as extra:
            return _run_child(cfg, results, quiet, jobs, lock_fd, children, extra, device, save_adapter, log_to)
    return _run_child(cfg, results, quiet, jobs, lock_fd, children, None, device, save_adapter, log_to)


def _run_child(
    cfg: RunConfig,
    results: Path,
    quiet: bool,
    jobs: int,
    lock_fd: int | None,
    children: Children | None,
    extra: dict[str, str] | None,
    device: str | None,
    save_adapter: bool = False,
    log_to: tuple[str, ...] = (),
) -> int:
    with resolved_file(canonical_json(cfg)) as cfg_file:
        args = run_args(cfg_file, str(results), quiet, save_adapter, log_to)
        if device is not None:
            args += ["--device", device]
        cmd = INTERPRETER + args
        kw = dict(env=child_env(jobs, extra), pass_fds=() if lock_fd is None else (lock_fd,), start_new_session=True)
        if children is None:
            return subprocess.run(cmd, **kw).returncode
        if warm.available():  # forked from a server that imported torch once (warm.py)
            proc = children.start(lambda: warm.WarmProcess(args, kw["env"], lock_fd))
        else:
            proc = children.spawn(cmd, **kw)
        if proc is None:
            raise KeyboardInterrupt  # the sweep is stopping
        try:
            return proc.wait()
        finally:
            children.discard(proc)


class LocalExecutor:
    """A fresh interpreter per run, `jobs` at once; with GPU slots (devices.assign_gpus), one run per GPU."""

    def __init__(
        self,
        env_slots: EnvSlots | None = None,
        device: str | None = None,
        save_adapter: bool = False,
        log_to: tuple[str, ...] = (),
    ) -> None:
        self.children = Children()
        self.env_slots = env_slots
        self.device = device
        self.save_adapter = save_adapter
        self.log_to = log_to

    def slots(self, jobs: int) -> int:
        return self.env_slots.size if self.env_slots is not None else max(1, jobs)

    def run(self, cfg: RunConfig, results: Path, quiet: bool, jobs: int, lock_fd: int) -> int:
        return run_in_subprocess(
            cfg, results, quiet, jobs=jobs, lock_fd=lock_fd, children=self.children, slots=self.env_slots,
            device=self.device, save_adapter=self.save_adapter, log_to=self.log_to,
        )  # fmt: skip

    def stop(self) -> None:
        self.children.stop_all()

    def close(self) -> None:
        pass


class InlineExecutor:
    """In this process, one run at a time (for debugging, and where a child process cannot start)."""

    def __init__(self, device: str = "auto", save_adapter: bool = False, log_to: tuple[str, ...] = ()) -> None:
        self.device = device
        self.save_adapter = save_adapter
        self.log_to = log_to

    def slots(self, jobs: int) -> int:
        if jobs > 1:
            # Runs in one process share the global RNG state, so concurrent inline runs would not be reproducible.
            log.warning("the inline executor runs one config at a time; ignoring --jobs %d", jobs)
        return 1

    def run(self, cfg: RunConfig, results: Path, quiet: bool, jobs: int, lock_fd: int) -> int:
        from peftbench.harness.run.runner import execute

        rec = execute(
            cfg, results, progress=not quiet, save_adapter=self.save_adapter, device=self.device, log_to=self.log_to
        )
        return 0 if rec.ok else 1

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass
