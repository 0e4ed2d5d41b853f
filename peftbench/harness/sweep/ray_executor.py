"""Sweep executor on Ray: each run is a Ray task with its own resource request (CPUs, GPUs per run).

The sweep driver treats it like any executor: it takes the config's lock and checks for a record in this process,
then the run goes to Ray, and the lock is held until the task ends. A task does exactly what the local executor
does: `peftbench run --resolved CONFIG` in a fresh interpreter, so a
crash or out-of-memory kills that run only and its memory is returned to the node. Records go to the results
directory as usual, so on a cluster that directory (and the model and data paths in the configs) must be on a
filesystem every node sees, and peftbench must be installed in the nodes' Python environment.

Ray is an optional extra (`pip install 'peftbench[ray]'`) and is imported only when this executor is used.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig, canonical_json
from peftbench.errors import UsageError

log = logging.getLogger(__name__)

# Environment the runs need from the driver (offline switches, caches); a remote worker does not inherit it.
_FORWARDED_PREFIXES = ("PEFTBENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
_OPTION_KEYS = ("num_cpus", "num_gpus", "memory", "resources")


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise
        raise UsageError("install the ray extra: pip install 'peftbench[ray]'") from None
    return ray


def task_options(resources: dict[str, Any]) -> dict[str, Any]:
    """Ray task options from the per-run request: num_cpus, num_gpus, memory (bytes), resources (custom)."""
    unknown = sorted(set(resources) - set(_OPTION_KEYS))
    if unknown:
        raise UsageError(f"unknown Ray resource(s) {unknown}; use {', '.join(_OPTION_KEYS)}")
    options: dict[str, Any] = {"num_cpus": 1.0, "num_gpus": 0.0}
    for key in ("num_cpus", "num_gpus", "memory"):
        if resources.get(key) is None:
            continue
        value = resources[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UsageError(f"{key} per run must be a number >= 0, got {value!r}")
        options[key] = value
    if options["num_cpus"] <= 0:
        # Zero-CPU tasks are not limited by the node's CPUs: every run would start at once.
        raise UsageError("--cpus-per-run must be > 0")
    if resources.get("resources"):
        options["resources"] = dict(resources["resources"])
    return options


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}


def _run_one(
    config_json: str, results: str, cwd: str, env: dict[str, str], save_adapter: bool = False,
    log_to: tuple[str, ...] = (),
) -> int:
    """Body of the Ray task (runs on a worker): one `peftbench run` in a child process; its exit code."""
    import ray

    from peftbench.harness.sweep.executors import resolved_file, run_command

    child_env = {**os.environ, **env}
    if not ray.get_gpu_ids():
        # Ray leaves CUDA_VISIBLE_DEVICES alone for tasks without GPUs; hide them so a CPU run stays on CPU
        # and does not take a GPU another task was given.
        child_env["CUDA_VISIBLE_DEVICES"] = ""
    with resolved_file(config_json) as cfg_file:
        # The driver's directory, so relative --data paths mean the same thing (when this node has it).
        workdir = cwd if Path(cwd).is_dir() else None
        cmd = run_command(cfg_file, results, True, save_adapter, log_to)
        return subprocess.run(cmd, env=child_env, cwd=workdir).returncode


def _check_capacity(ray, options: dict[str, Any], own_instance: bool) -> None:
    """A request no node can satisfy leaves the task pending forever: refuse it on an instance we started,
    warn on a cluster (an autoscaler may add such nodes)."""
    total = ray.cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        have = float(total.get(name, 0.0))
        want = float(options.get(key) or 0.0)
        if want > have:
            msg = f"each run asks for {want:g} {name}(s) but the Ray cluster has {have:g}"
            if own_instance:
                raise UsageError(f"{msg}; lower --{name.lower()}s-per-run")
            log.warning("%s; runs stay pending until the cluster grows", msg)
    if total.get("GPU", 0.0) > 0 and not options.get("num_gpus"):
        log.warning("the Ray cluster has GPUs but each run asks for none: runs train on CPU (--gpus-per-run 1)")


class RayExecutor:
    """Joins the cluster at `address` when given; otherwise starts a local instance sized to this machine. A Ray
    connection this process already has is reused, and only what this executor started is shut down."""

    def __init__(
        self, address: str | None, resources: dict[str, Any], save_adapter: bool = False,
        log_to: tuple[str, ...] = (),
    ) -> None:
        self.save_adapter = save_adapter
        ray = self.ray = _import_ray()
        self.options = task_options(resources)
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address:
                    ray.init(address=address, ignore_reinit_error=True)
                else:
                    ray.init(include_dashboard=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
                raise UsageError(f"cannot start or join {where}: {str(e).splitlines()[0]}") from None
        elif address:
            log.info("already connected to a Ray instance; --address %s not used", address)
        try:
            _check_capacity(ray, self.options, own_instance=self.started and not address)
        except BaseException:
            self.close()
            raise
        self.task = ray.remote(_run_one).options(**self.options)
        self.env, self.cwd = _forwarded_env(), os.getcwd()
        self.log_to = tuple(log_to)
        self.in_flight: set = set()
        self.stopping = threading.Event()
        log.info("ray: each run asks for %s", ", ".join(f"{k}={v}" for k, v in self.options.items()))

    def slots(self, jobs: int) -> int:
        """Runs in flight at once: what the cluster holds now, or --jobs if larger (an autoscaler may grow it)."""
        total = self.ray.cluster_resources()
        fits = [float(total.get("CPU", 0.0)) / self.options["num_cpus"]]
        if self.options.get("num_gpus"):
            fits.append(float(total.get("GPU", 0.0)) / self.options["num_gpus"])
        return max(1, jobs, int(min(fits)))

    def run(self, cfg: RunConfig, results: Path, quiet: bool, jobs: int, lock_fd: int) -> int:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        ref = self.task.remote(
            canonical_json(cfg), str(Path(results).resolve()), self.cwd, self.env, self.save_adapter, self.log_to
        )
        self.in_flight.add(ref)
        try:
            # Short waits, so a Ctrl-C in the driver is not stuck behind a long run.
            while not self.ray.wait([ref], timeout=1.0)[0]:
                if self.stopping.is_set():
                    raise KeyboardInterrupt
            return int(self.ray.get(ref))
        except self.ray.exceptions.RayError as e:
            # A task that Ray itself lost (worker or node died): a failed run, and the sweep goes on.
            log.warning("ray: %s was lost: %s", cfg.label, str(e).splitlines()[0])
            return 1
        finally:
            self.in_flight.discard(ref)

    def stop(self) -> None:
        self.stopping.set()
        for ref in list(self.in_flight):
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False
