"""Run processes forked from a warm server instead of started as new interpreters.

Why: importing torch and transformers costs about 4.5 s of CPU per interpreter, a tenth of a short standard
run; over the 264 runs of the standard leaderboard that was about 20 core-minutes of imports. A forkserver that
imported them once forks each run from that state: still one fresh process per run (its own memory peak, its
own random state, a crash kills that run only), without paying for the imports every time.

`PEFTBENCH_WARM_START=0` turns it off (every run a new interpreter, as before), as does a platform without
`fork` (the sweep then starts `python -m peftbench run` per run)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
from multiprocessing import reduction
from typing import Any

log = logging.getLogger(__name__)

# Modules the server imports once; a failing one is skipped by multiprocessing, the run then imports it itself.
PRELOAD = ("torch", "transformers", "peftbench.harness.cli", "peftbench.harness.run.runner")

_ctx_lock = threading.Lock()
_ctx: Any = None


def available() -> bool:
    return os.environ.get("PEFTBENCH_WARM_START", "1") != "0" and "forkserver" in mp.get_all_start_methods()


def _context() -> Any:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            _ctx = mp.get_context("forkserver")
            _ctx.set_forkserver_preload(list(PRELOAD))
        return _ctx


def _identity(x: Any) -> Any:
    return x


class _PassFd:
    """An open file descriptor handed to the forked run: pickled while the process starts, so multiprocessing
    sends the descriptor itself along (a duplicate sharing the open file, hence the config's flock)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return (_identity, (reduction.DupFd(self.fd),))


def _child(argv: list[str], env: dict[str, str], lock: Any) -> None:
    os.setsid()  # like start_new_session: Ctrl-C reaches the sweep, which stops its runs
    if lock is not None:
        lock.detach()  # kept open until exit: the config stays locked while this run lives
    os.environ.clear()
    os.environ.update(env)
    import torch

    # The server imported torch with its own environment; this run's thread share is set here, before any work.
    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
    from peftbench.harness.cli import main

    sys.exit(main(argv))


class WarmProcess:
    """One run forked from the warm server, with the part of `subprocess.Popen`'s interface the sweep uses."""

    def __init__(self, argv: list[str], env: dict[str, str], lock_fd: int | None = None) -> None:
        lock = None if lock_fd is None else _PassFd(lock_fd)
        self._proc = _context().Process(target=_child, args=(list(argv), dict(env), lock), name="peftbench-run")
        self._proc.start()
        self.pid = self._proc.pid

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired("peftbench run", timeout or 0)
        return self._proc.exitcode

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        self._proc.kill()
