"""Sweeps: expand tasks x methods x budgets x seeds into resolved configs, skip what is done, run the rest."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench import registry
from peftbench.config import RunConfig, canonical_json, run_config_from_dict
from peftbench.harness.plan import RunRequest, resolve
from peftbench.records import load_record, record_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    record: Path
    done: bool
    status: str  # "ok", "failed", "missing", or why a record on disk is unusable

    @property
    def label(self) -> str:
        c = self.config
        budget = f" @{c.budget}" if c.budget else ""
        return f"{c.task}/{c.method}{budget} seed {c.seed}"


def expand(
    tasks: Iterable[str], methods: Iterable[str], budgets: Iterable[str | None], seeds: Iterable[int], **common: Any
) -> list[RunRequest]:
    """The grid. Unbudgeted methods (full fine-tuning) run once per task and seed, whatever the budgets."""
    budgets = list(budgets) or [None]
    out: list[RunRequest] = []
    for task in tasks:
        for method in methods:
            budgeted = registry.adapters.get(method).budgeted
            for budget in budgets if budgeted else [None]:
                for seed in seeds:
                    out.append(RunRequest(task=task, method=method, seed=seed, budget=budget, **common))
    return out


def plan(requests: list[RunRequest], results: Path) -> list[PlannedRun]:
    planned: list[PlannedRun] = []
    seen: set[str] = set()
    for req in requests:
        cfg = resolve(req)
        if cfg.config_hash in seen:
            continue
        seen.add(cfg.config_hash)
        path = record_path(results, cfg.task, cfg.method, cfg.config_hash)
        rec = load_record(path)
        if rec.data is not None:
            status = rec.data.get("status", "?")
        else:
            status = rec.problem or "missing"
            if rec.problem != "missing":
                log.warning("%s: %s; it will be rerun", path, rec.problem)
        planned.append(PlannedRun(cfg, path, rec.ok, status))
    return planned


# --- executors ------------------------------------------------------------------------------------------------


def run_in_subprocess(cfg: RunConfig, results: Path, quiet: bool = True) -> int:
    """One run in a fresh interpreter: a crash or out-of-memory kills that run only, and its peak memory is
    its own. Returns the child's exit code."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, prefix="peftbench-run-") as f:
        f.write(canonical_json(cfg))
        cfg_file = f.name
    try:
        cmd = [sys.executable, "-m", "peftbench", "run", "--resolved", cfg_file, "--results", str(results)]
        if quiet:
            cmd.append("--quiet")
        env = dict(os.environ)
        return subprocess.run(cmd, env=env).returncode
    finally:
        Path(cfg_file).unlink(missing_ok=True)


def run_inline(cfg: RunConfig, results: Path, quiet: bool = True) -> int:
    from peftbench.harness.runner import execute

    rec = execute(cfg, results, progress=not quiet)
    return 0 if rec["status"] == "ok" else 1


def load_resolved(path: str) -> RunConfig:
    return run_config_from_dict(json.loads(Path(path).read_text()))


@dataclass
class SweepOutcome:
    ran: int = 0
    skipped: int = 0
    failed: list[str] | None = None

    def __post_init__(self) -> None:
        self.failed = self.failed or []


def run_sweep(
    planned: list[PlannedRun],
    results: Path,
    jobs: int = 1,
    executor: str = "local",
    progress: bool = True,
    ray_address: str | None = None,
    ray_resources: dict | None = None,
    on_done: Callable[[PlannedRun, int], None] | None = None,
) -> SweepOutcome:
    todo = [p for p in planned if not p.done]
    outcome = SweepOutcome(skipped=len(planned) - len(todo))
    if not todo:
        return outcome
    if executor == "ray":
        from peftbench.harness.ray_executor import run_with_ray

        codes = run_with_ray([p.config for p in todo], results, ray_address, ray_resources or {})
        for p, code in zip(todo, codes, strict=False):
            _finish(p, code, outcome, on_done)
        return outcome
    runner = run_inline if executor == "inline" else run_in_subprocess
    bar = _bar(len(todo), progress)
    start = time.perf_counter()
    try:
        if jobs <= 1:
            for p in todo:
                if bar is not None:
                    bar.set_postfix_str(p.label)
                code = runner(p.config, results, True)
                _finish(p, code, outcome, on_done)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(runner, p.config, results, True): p for p in todo}
                for fut in as_completed(futures):
                    _finish(futures[fut], fut.result(), outcome, on_done)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log.info(
        "sweep: %d run, %d skipped, %d failed in %.0f s",
        outcome.ran,
        outcome.skipped,
        len(outcome.failed),
        time.perf_counter() - start,
    )
    return outcome


def _finish(p: PlannedRun, code: int, outcome: SweepOutcome, on_done) -> None:
    outcome.ran += 1
    rec = load_record(p.record)
    if code != 0 or not rec.ok:
        why = rec.data.get("error") if rec.data else (rec.problem or f"exit code {code}")
        outcome.failed.append(f"{p.label}: {why}")
        log.warning("run failed: %s: %s", p.label, why)
    if on_done is not None:
        on_done(p, code)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)
