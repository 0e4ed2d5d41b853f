"""The Python API (`peftbench.run`, `peftbench.sweep`) and the steps the command line shares with it, so a name,
a setting or a budget is checked the same way, with the same one-line message, from Python and from the shell.

Errors: `UsageError` (and `BudgetError`) for input that can be fixed, raised before anything is written;
`RunFailed` for a run that trained and failed (its record is written). Module level imports stay light:
`import peftbench` must not pull in torch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench.errors import RunFailed, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from peftbench.config import RunConfig
    from peftbench.harness.run.plan import RunRequest
    from peftbench.harness.sweep.driver import PlannedRun, SweepOutcome
    from peftbench.records import RunRecord

log = logging.getLogger(__name__)

Settings = Mapping[str, Any] | Iterable[str] | None


# --- what the command line and the API share ----------------------------------------------------------------


def check_scoped_sets(sets: Iterable[str], methods: Iterable[str]) -> None:
    """A `--set METHOD.key=value` for a method this command does not run would change nothing: say so."""
    from peftbench.config import check_method_scope, scoped_method

    methods = tuple(methods)
    for item in sets:
        scope = scoped_method(item)
        if scope is not None and scope not in methods:
            check_method_scope(scope, item)  # a typo gets the list of method names
            raise UsageError(
                f"--set {item} is for method {scope!r}, which this command does not run ({', '.join(methods)})"
            )


def prepare_run(req: RunRequest, log_to: tuple[str, ...] = ()) -> RunConfig:
    """Everything one run checks before it takes its lock, so bad input fails here and writes nothing."""
    from peftbench.harness.run.data import check_data
    from peftbench.harness.run.devices import parse_device, refuse_multiprocess
    from peftbench.harness.run.plan import resolve
    from peftbench.harness.run.trackers import check_trackers

    refuse_multiprocess()
    parse_device(req.device)  # a GPU asked for on a machine without one fails here
    check_trackers(log_to)
    check_scoped_sets(req.sets, (req.method,))
    cfg = resolve(req)
    check_data(cfg.task, cfg.data)
    return cfg


def execute_run(
    cfg: RunConfig,
    results: Path,
    *,
    locked_by_caller: bool = False,
    progress: bool = False,
    save_adapter: bool = False,
    device: str = "auto",
    log_to: tuple[str, ...] = (),
) -> RunRecord:
    """Train one resolved config under its lock (a sweep's child inherits the sweep's: `locked_by_caller`) and
    return its record; RunFailed when the run failed."""
    from peftbench.harness.run.runner import execute
    from peftbench.records import lock_holder, record_path, release_lock, try_lock

    lock = None
    if not locked_by_caller:
        path = record_path(results, cfg.task, cfg.method, cfg.config_hash)
        lock = try_lock(path)
        if lock is None:
            raise UsageError(
                f"another peftbench process (pid {lock_holder(path)}) is running this config into {results}; "
                f"wait for it to finish"
            )
    try:
        rec = execute(cfg, Path(results), progress=progress, save_adapter=save_adapter, device=device, log_to=log_to)
    finally:
        if lock is not None:
            release_lock(lock)
    if not rec.ok:
        raise RunFailed(rec)
    return rec


def prepare_sweep(
    tasks: tuple[str, ...],
    methods: tuple[str, ...],
    budgets: tuple[str, ...],
    seeds: tuple[int, ...],
    *,
    results: Path,
    jobs: int = 1,
    log_to: tuple[str, ...] = (),
    **common: Any,
) -> list[PlannedRun]:
    """The grid, resolved and checked (names, settings, budgets, data) before anything runs; `common` is what
    every RunRequest shares (model, data, sets, profile, device)."""
    from peftbench.harness.run.devices import parse_device, refuse_multiprocess
    from peftbench.harness.run.trackers import check_trackers
    from peftbench.harness.sweep.driver import expand, plan

    if jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, got {jobs}")
    refuse_multiprocess()
    parse_device(common.get("device", "auto"))
    check_trackers(log_to)
    for flag, values in (("--tasks", tasks), ("--methods", methods), ("--seeds", seeds)):
        if not values:
            raise UsageError(f"{flag} is empty; give a comma-separated list (see `peftbench list`)")
    check_scoped_sets(common.get("sets", ()), methods)
    return plan(expand(tasks, methods, budgets, seeds, **common), Path(results))


def run_planned(
    planned: list[PlannedRun],
    results: Path,
    *,
    jobs: int = 1,
    executor: str = "local",
    progress: bool = False,
    device: str = "auto",
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    log_to: tuple[str, ...] = (),
    save_adapter: bool = False,
) -> SweepOutcome:
    """Run what the plan has not done yet (KeyboardInterrupt stops the runs in flight and propagates); with
    `save_adapter`, every run it trains saves its adapter beside its record."""
    from peftbench.harness.run.devices import assign_gpus
    from peftbench.harness.run.plan import budget_mismatches
    from peftbench.harness.sweep.driver import run_sweep

    for line in budget_mismatches([p.config for p in planned]):
        log.warning("budget not matched within 5%%: %s", line)
    todo = sum(not p.done for p in planned)
    log.info("sweep: %d configs, %d to run, %d already done", len(planned), todo, len(planned) - todo)
    return run_sweep(
        planned,
        Path(results),
        jobs=jobs,
        executor=executor,
        progress=progress,
        ray_address=address,
        ray_resources={"num_cpus": cpus_per_run, "num_gpus": gpus_per_run},
        device=device,
        gpu_envs=assign_gpus(jobs, device) if executor == "local" else None,
        log_to=log_to,
        save_adapter=save_adapter,
    )


# --- the Python API -----------------------------------------------------------------------------------------


def run(
    task: str,
    method: str,
    budget: str | int | None = None,
    seed: int = 0,
    *,
    model: str | Path = "minilm-l6",
    data: str | Path = "sample",
    profile: str = "quick",
    results: str | Path = "results",
    device: str = "auto",
    set: Settings = None,  # noqa: A002 - the CLI's --set, by its name
    save_adapter: bool = False,
    log_to: str | Iterable[str] | None = None,
    progress: bool = False,
    **settings: Any,
) -> RunRecord:
    """Train and evaluate one configuration, like `peftbench run`, and return its record (also written to
    `results/runs/<task>/<method>/<config-hash>.json`).

    Settings are the CLI's `--set` keys: as keyword arguments (`lr=5e-4`, `r=16`), with `__` where the CLI has a
    dot (`lora__r=16` is `--set lora.r=16`, `train__lr=5e-4` is `--set train.lr=5e-4`), or as `set`, a dict with
    the CLI's keys (`set={"lora.r": 16}`) or a list of its `key=value` strings. Raises UsageError / BudgetError
    on bad input (nothing written) and RunFailed when training failed (the record is written and attached)."""
    from peftbench.harness.run.plan import RunRequest

    log_to = _names(log_to or ())
    req = RunRequest(
        task=task,
        method=method,
        seed=int(seed),
        model=str(model),
        data=str(data),
        budget=_budget(budget),
        sets=settings_items(set, settings),
        profile=profile,
        device=device,
    )
    cfg = prepare_run(req, log_to)
    return execute_run(cfg, Path(results), progress=progress, save_adapter=save_adapter, device=device, log_to=log_to)


def sweep(
    tasks: str | Iterable[str],
    methods: str | Iterable[str],
    budgets: str | int | Iterable[str | int] | None = None,
    seeds: int | Iterable[int] = (0,),
    *,
    model: str | Path = "minilm-l6",
    data: str | Path = "sample",
    profile: str = "quick",
    results: str | Path = "results",
    device: str = "auto",
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    set: Settings = None,  # noqa: A002 - the CLI's --set, by its name
    log_to: str | Iterable[str] | None = None,
    progress: bool = False,
    save_adapter: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Run the grid tasks x methods x budgets x seeds, like `peftbench sweep` (configs whose record is ok are
    not run again), and return one row per config: task, method, budget, seed, status, primary_name, primary,
    every metric (`metric.<name>`), the parameter counts (adapter, adapter_peak, trainable, head, total),
    train_seconds and the other speed columns, error, config_hash, record (the record's path) and ran (False
    where the record was already there). A failed run is a row with status `failed` and its error.

    Lists may be given as Python lists or as the CLI's comma-separated strings; settings as for `run`. Raises
    UsageError / BudgetError on bad input, before anything runs."""
    log_to = _names(log_to or ())
    planned = prepare_sweep(
        _names(tasks),
        _names(methods),
        tuple(_budget(b) for b in _listed(budgets)),
        _seeds(seeds),
        results=Path(results),
        jobs=jobs,
        log_to=log_to,
        model=str(model),
        data=str(data),
        sets=settings_items(set, settings),
        profile=profile,
        device=device,
    )
    outcome = run_planned(
        planned, Path(results), jobs=jobs, executor=executor, progress=progress, device=device, address=address,
        cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, log_to=log_to, save_adapter=save_adapter,
    )  # fmt: skip
    return runs_table(planned, outcome)


def runs_table(planned: list[PlannedRun], outcome: SweepOutcome) -> pd.DataFrame:
    """One row per planned config, from its record as it is now (leaderboard columns, see aggregate.record_row)."""
    import pandas as pd

    from peftbench.harness.report.aggregate import record_row
    from peftbench.records import load_record

    rows = []
    for p in planned:
        loaded = load_record(p.record)
        if loaded.record is not None:
            row = record_row(loaded.record)
        else:  # the run's process died before writing anything
            c = p.config
            row = {"task": c.task, "method": c.method, "budget": c.budget or "-", "seed": c.seed, "status": "failed",
                   "error": outcome.why_failed.get(c.config_hash, loaded.problem), "config_hash": c.config_hash,
                   "record": None}  # fmt: skip
        row["ran"] = not p.done
        rows.append(row)
    df = pd.DataFrame(rows)
    first = [c for c in _FIRST_COLUMNS if c in df.columns]
    metrics = sorted(c for c in df.columns if c.startswith("metric."))
    rest = [c for c in df.columns if c not in first and c not in metrics]
    return df[first + metrics + rest]


_FIRST_COLUMNS = (
    "task", "method", "budget", "seed", "status", "primary_name", "primary", "adapter", "adapter_peak", "trainable",
    "head", "total", "train_seconds", "samples_per_s", "tokens_per_s", "step_ms", "peak_memory_bytes", "error",
    "config_hash", "record", "ran",
)  # fmt: skip


# --- Python values as the CLI's strings -------------------------------------------------------------------------


def settings_items(set: Settings, settings: Mapping[str, Any]) -> tuple[str, ...]:  # noqa: A002
    """Python settings as the CLI's `--set key=value` items, so both take one path (config.split_overrides):
    the values go as Python literals, which the CLI's parser (ast.literal_eval) reads back exactly."""
    items: list[str] = []
    if isinstance(set, str):
        items.append(set)
    elif isinstance(set, Mapping):
        items += [_item(str(k), v) for k, v in set.items()]
    elif set is not None:
        items += [str(s) for s in set]
    items += [_item(k.replace("__", "."), v) for k, v in settings.items()]
    return tuple(items)


def _item(key: str, value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a numpy scalar: its repr is not a literal
    return f"{key}={value!r}"


def _listed(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in _listed(value))


def _seeds(value: int | Iterable[int]) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _listed(value))
    except (TypeError, ValueError):
        raise UsageError(f"seeds must be integers like 0,1,2, got {value!r}") from None


def _budget(value: str | int | float | None) -> str | None:
    """A budget as the CLI spells it: `0.3M`, `150K`, `0.5%`, or a plain count (300000 -> "300000")."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
