"""`peftbench regress`: the CI accuracy gate. A fixed suite runs through the sweep machinery and each
(task, method) row is compared with the committed baseline `results/baselines/regress.json`.

The suite: the embedded MiniLM (`minilm-l6`) on the bundled sample data, SST-2 (single sentence) and QQP
(sentence pair, accuracy/F1; MRPC and RTE stay at the majority class, QNLI at chance and STS-B near zero
correlation in any run short enough for CI), the methods of the baseline (`make regress-update` with no
--methods: every built-in method, entry points whose module is under `peftbench.`), seeds 0, 1 and 2, the short
"regress" training profile with its recipe (`peftbench/recipes/regress.json`: rows per task, learning rates
chosen on a dev split), each run on one thread (`one_thread`), one run per core. Records are reused when their
config hash matches, so a second `make regress` trains nothing; `--fresh` reruns every run (the hash covers the
config, not the code, so use it locally after a code change; CI starts from a clean clone).

Determinism: on CPU the same config and seed give bit-identical metrics, so a pure refactor shows a delta of
exactly 0 on every row ("pass, identical").

Allowed drop: see `rule.py` (the tighter of a seed-spread and a paired per-example estimate, at most three
points). An update refuses a suite row that did not learn (not better than the task's trivial baseline at
alpha = 0.01), pooled over its seeds or on any one seed alone: a row (or seed) at chance or the majority class
cannot show a regression.

Exit codes: 0 every row passes (or is "new": no baseline row, e.g. a new method), 1 at least one regression,
2 the suite could not run (a failed run, a missing or unreadable baseline, bad input). A failed run wins over
a regression: the suite is then incomplete and the table says which row failed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from peftbench import registry
from peftbench.errors import UsageError
from peftbench.harness.args import add_set_option, int_list, names
from peftbench.harness.regress.rule import (
    CAP,
    FLOOR,
    K_SIGMA,
    LEARNED_ALPHA,
    RULE_TEXT,
    allowance,
    learned_p,
    paired_se,
    references_digest,
)
from peftbench.harness.regress.rule import std as _std
from peftbench.records import atomic_write_text, load_record

log = logging.getLogger(__name__)

BASELINE_SCHEMA = 1
BASELINE_PATH = Path("results") / "baselines" / "regress.json"


@dataclass(frozen=True)
class Suite:
    model: str = field(default="minilm-l6", metadata={"help": "model alias, directory or hub id"})
    tasks: tuple[str, ...] = field(default=("sst2", "qqp"), metadata={"help": "GLUE tasks of the suite"})
    methods: tuple[str, ...] = field(default=(), metadata={"help": "methods (empty: every built-in method)"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds per (task, method)"})
    profile: str = field(default="regress", metadata={"help": "training profile of config.PROFILES"})
    sets: tuple[str, ...] = field(default=(), metadata={"help": "`--set key=value` overrides for every run"})
    data: str = field(default="sample", metadata={"help": "data source (the bundled samples by default)"})

    def method_names(self) -> tuple[str, ...]:
        return self.methods or builtin_methods()


def builtin_methods(points: Iterable[metadata.EntryPoint] | None = None) -> tuple[str, ...]:
    """Registered methods implemented inside peftbench; third-party plugins are not ours to gate, and neither
    is the peft backend (peft's code, an optional extra)."""
    if points is None:
        points = metadata.entry_points(group=registry.ADAPTER_GROUP)
    return tuple(
        sorted(
            {
                ep.name
                for ep in points
                if ep.module.split(".")[0] == "peftbench" and not ep.module.startswith(_PEFT_BACKEND)
            }
        )
    )


_PEFT_BACKEND = "peftbench.adapters.peft_backend"


def allowed_drop(baseline_values: list[float], n_now: int, paired: float | None = None) -> float:
    return allowance(baseline_values, n_now, paired).value


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


# --- running the suite ---------------------------------------------------------------------------------------


@dataclass
class RowResult:
    task: str
    method: str
    metric: str
    higher_is_better: bool
    values: dict[int, float] = field(default_factory=dict)  # seed -> primary metric
    hashes: dict[int, str] = field(default_factory=dict)  # seed -> config hash
    failed: list[str] = field(default_factory=list)
    # Per seed, the predictions on the primary evaluation split (the paired term of the rule), and their references.
    predictions: dict[int, list] = field(default_factory=dict)
    references: list | None = None
    data: str = "sample"
    train_rows: int = 0


@dataclass
class SuiteRun:
    rows: dict[tuple[str, str], RowResult]
    ran: int
    reused: int


@contextmanager
def one_thread() -> Iterator[None]:
    """Every suite run computes on one thread: the thread count changes the GEMMs' summation order, so a
    baseline made on a 2-core laptop and a check on a 16-core runner would otherwise differ in the last bits
    and "a pure refactor gives a delta of exactly 0" would hold only on matching machines. Cores are used by
    running several suite runs at once instead (--jobs)."""
    import torch

    saved_env, saved_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"  # read by each run process at start-up
    torch.set_num_threads(1)  # the inline executor's runs
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env


def default_jobs() -> int:
    from peftbench.harness.sweep.executors import cpu_count

    return max(1, cpu_count())


def run_suite(
    suite: Suite,
    results: Path,
    fresh: bool = False,
    executor: str = "local",
    progress: bool = False,
    jobs: int = 1,
) -> SuiteRun:
    """Expand, plan and run the suite with the sweep machinery; read back exactly the planned records."""
    import dataclasses

    from peftbench.harness.sweep.driver import expand, plan, run_sweep

    requests = expand(
        suite.tasks,
        suite.method_names(),
        [],
        suite.seeds,
        model=suite.model,
        data=suite.data,
        sets=tuple(suite.sets),
        profile=suite.profile,
    )
    planned = plan(requests, results)
    if fresh:
        planned = [dataclasses.replace(p, done=False) for p in planned]
    # Inline runs share one process's RNG state, so they go one at a time.
    jobs = 1 if executor == "inline" else max(1, jobs)
    with one_thread():
        outcome = run_sweep(planned, results, jobs=jobs, executor=executor, progress=progress)
    # The sweep's own account wins: a run that failed now may have left an older ok record behind (--fresh).
    failed = outcome.why_failed
    rows: dict[tuple[str, str], RowResult] = {}
    for p in planned:
        c = p.config
        spec = registry.tasks.get(c.task)
        row = rows.setdefault(
            (c.task, c.method), RowResult(c.task, c.method, spec.primary_metric, spec.higher_is_better)
        )
        loaded = load_record(p.record)
        if c.config_hash in failed or not loaded.ok:
            why = failed.get(c.config_hash) or (loaded.record and loaded.record.error) or loaded.problem
            row.failed.append(f"seed {c.seed}: {why}")
            continue
        row.values[c.seed] = float(loaded.record.metrics.primary)
        row.hashes[c.seed] = c.config_hash
        row.data, row.train_rows = c.data, c.train.train_rows
        _read_predictions(row, spec, p.record, c.seed)
    return SuiteRun(rows, outcome.ran, outcome.skipped + outcome.elsewhere)


def _read_predictions(row: RowResult, task, record: Path, seed: int) -> None:
    from peftbench.harness.report.compare import load_predictions, primary_split

    try:
        preds, refs = load_predictions(record, primary_split(task))
    except UsageError as e:
        log.warning("%s/%s seed %d: %s; the paired term is left out", row.task, row.method, seed, e)
        return
    if row.references is None:
        row.references = refs
    if refs == row.references:
        row.predictions[seed] = preds


# --- judging -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    task: str
    method: str
    metric: str
    base: list[float] | None
    now: list[float]
    delta: float | None  # now mean - baseline mean
    allowed: float | None
    verdict: str  # pass | pass, identical | improved | REGRESSION | new | FAILED
    config_changed: bool = False
    bound: str = ""  # which term of the rule set the allowed drop


def judge(row: RowResult, base_row: dict[str, Any] | None, task=None) -> Verdict:
    now = [row.values[s] for s in sorted(row.values)]
    if row.failed or not now:
        base_vals = list(base_row["values"].values()) if base_row else None
        return Verdict(row.task, row.method, row.metric, base_vals, now, None, None, "FAILED")
    if base_row is None:
        return Verdict(row.task, row.method, row.metric, None, now, None, None, "new")
    base_values = {int(s): float(v) for s, v in base_row["values"].items()}
    base = [base_values[s] for s in sorted(base_values)]
    delta = _mean(now) - _mean(base)
    paired = None
    stored = base_row.get("predictions") or {}
    same_rows = row.references is not None and base_row.get("references_digest") == references_digest(row.references)
    if task is not None and stored and same_rows:
        base_preds = {int(k): json.loads(v) if isinstance(v, str) else v for k, v in stored.items()}
        paired = paired_se(task, base_preds, row.predictions, row.references)
    rule = allowance(base, len(now), paired)
    allowed = rule.value
    drop = -delta if row.higher_is_better else delta
    hashes = base_row.get("config_hashes", {})
    changed = any(hashes.get(str(s)) not in (None, h) for s, h in row.hashes.items())
    if base_values == row.values:
        verdict = "pass, identical"
    elif drop > allowed:
        verdict = "REGRESSION"
    elif -drop > allowed:
        verdict = "improved"
    else:
        verdict = "pass"
    return Verdict(row.task, row.method, row.metric, base, now, delta, allowed, verdict, changed, rule.bound)


def _mean_std(values: list[float] | None) -> str:
    if not values:
        return "-"
    std = _std(values)
    spread = "-" if math.isnan(std) else f"{std:.4f}"
    return f"{_mean(values):.4f} ± {spread} (n={len(values)})"


def _delta(d: float | None) -> str:
    if d is None:
        return "-"
    if d == 0:
        return "0"
    return f"{d:+.4f}" if abs(d) >= 5e-5 else f"{d:+.2e}"


def render(verdicts: list[Verdict]) -> str:
    from tabulate import tabulate

    rows = [
        {
            "task": v.task,
            "method": v.method,
            "metric": v.metric,
            "baseline mean ± std": _mean_std(v.base),
            "now mean ± std": _mean_std(v.now),
            "delta": _delta(v.delta),
            "allowed drop": "-" if v.allowed is None else f"{v.allowed:.4f} ({v.bound})",
            "verdict": v.verdict + (" (config changed)" if v.config_changed else ""),
        }
        for v in verdicts
    ]
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


# --- the baseline file ---------------------------------------------------------------------------------------


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f'no baseline at {path}; make one with `make regress-update REASON="..."`') from None
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot read baseline {path} ({type(e).__name__}); regenerate it with make regress-update"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("rows"), list):
        raise UsageError(f"{path} is not a schema-{BASELINE_SCHEMA} regress baseline; regenerate it")
    for r in data["rows"]:
        ok = isinstance(r, dict) and {"task", "method", "values"} <= set(r) and isinstance(r["values"], dict)
        if not ok or not r["values"] or not all(isinstance(v, (int, float)) for v in r["values"].values()):
            raise UsageError(f"{path}: malformed row {r!r}; regenerate the baseline")
    return data


def baseline_rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["task"], r["method"]): r for r in data["rows"]}


def make_baseline(
    suite: Suite, run: SuiteRun, reason: str, command: str, previous: dict | None, learned: dict | None = None
) -> dict[str, Any]:
    import torch

    from peftbench.harness.run.measure import environment

    rows = []
    learned = learned or {}
    for (task, method), r in sorted(run.rows.items()):
        vals = [r.values[s] for s in sorted(r.values)]
        rows.append(
            {
                "task": task,
                "method": method,
                "metric": r.metric,
                "higher_is_better": r.higher_is_better,
                "values": {str(s): r.values[s] for s in sorted(r.values)},
                "mean": _mean(vals),
                "std": None if len(vals) < 2 else _std(vals),
                "config_hashes": {str(s): r.hashes[s] for s in sorted(r.hashes)},
                "learned_p": learned.get((task, method), (None, ""))[0],
                "trivial_baseline": learned.get((task, method), (None, ""))[1],
                "references_digest": None if r.references is None else references_digest(r.references),
                # Every seed's per-example predictions: the paired term of the rule compares with these.
                # (Each seed's list as one compact JSON string, so the file stays readable line by line.)
                "predictions": {
                    str(s): json.dumps(r.predictions[s], separators=(",", ":")) for s in sorted(r.predictions)
                },
            }
        )
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    history = list((previous or {}).get("history", []))
    history.append({"created": created, "reason": reason, "command": command})
    with one_thread():
        env = environment(torch.device("cpu"))
    return {
        "schema": BASELINE_SCHEMA,
        "created": created,
        "reason": reason,
        "command": command,
        "suite": {**asdict(suite), "methods": list(suite.method_names())},
        "rule": {"k_sigma": K_SIGMA, "floor": FLOOR, "cap": CAP, "text": RULE_TEXT},
        "versions": env.pop("versions"),
        "environment": env,
        "rows": rows,
        "history": history,
    }


def _suite_notes(suite: Suite, data: dict[str, Any]) -> list[str]:
    recorded = data.get("suite") or {}
    now = json.loads(json.dumps(asdict(suite)))  # tuples as lists, as the baseline has them
    keys = ("model", "tasks", "seeds", "profile", "sets", "data")
    return [
        f"suite differs from the baseline's: {k} {now[k]!r} vs {recorded[k]!r}"
        for k in keys
        if now[k] != recorded.get(k, now[k])
    ]


# --- the gate ------------------------------------------------------------------------------------------------


@dataclass
class RegressReport:
    exit_code: int
    verdicts: list[Verdict]
    text: str


def regress(
    suite: Suite | None = None,
    results: Path | str = "results",
    baseline: Path | str = BASELINE_PATH,
    update: bool = False,
    reason: str | None = None,
    fresh: bool = False,
    executor: str = "local",
    progress: bool = False,
    command: str | None = None,
    jobs: int = 1,
) -> RegressReport:
    """Run the suite and judge it against the baseline; with `update`, write the baseline instead of failing."""
    suite = suite or Suite()
    results, baseline = Path(results), Path(baseline)
    if update and not (reason or "").strip():
        raise UsageError('--update needs --reason "why the baseline changes" (make regress-update REASON="...")')
    if not update:
        previous: dict[str, Any] | None = load_baseline(baseline)
    else:
        # An update replaces whatever is there; the old baseline, when readable, is shown for comparison.
        try:
            previous = load_baseline(baseline)
        except UsageError as e:
            log.info("%s; this update writes a new one", e)
            previous = None
    run = run_suite(suite, results, fresh=fresh, executor=executor, progress=progress, jobs=jobs)
    base = baseline_rows(previous) if previous else {}
    verdicts = [judge(run.rows[key], base.get(key), registry.tasks.get(key[0])) for key in sorted(run.rows)]
    lines = [render(verdicts), "", RULE_TEXT + "."]
    lines.append(f"runs: {run.ran} trained, {run.reused} reused from {results}/runs (same config hash; --fresh reruns)")
    if previous:
        lines.append(f"baseline: {baseline}, made {previous.get('created')} ({previous.get('reason')})")
        lines.extend(_suite_notes(suite, previous))
        changed = [f"{v.task}/{v.method}" for v in verdicts if v.config_changed]
        if changed:
            lines.append(
                "config hash differs from the baseline's (a default or override changed): " + ", ".join(changed)
            )
        missing = sorted(set(base) - set(run.rows))
        if missing:
            lines.append("baseline rows not in this suite: " + ", ".join(f"{t}/{m}" for t, m in missing))
    failed = [v for v in verdicts if v.verdict == "FAILED"]
    for v in failed:
        for why in run.rows[(v.task, v.method)].failed:
            lines.append(f"failed: {v.task}/{v.method} {why}")
    for kind in ("new", "improved"):
        names = [f"{v.task}/{v.method}" for v in verdicts if v.verdict == kind]
        if names and not update:
            lines.append(f"{kind}: {', '.join(names)} (not a failure; record with make regress-update REASON=...)")
    regressed = [f"{v.task}/{v.method}" for v in verdicts if v.verdict == "REGRESSION"]
    if failed:
        code = 2
        lines.append(f"suite incomplete: {len(failed)} row(s) failed to run")
    elif update and (unlearned := _unlearned(learned := _learned(run))):
        code = 2
        lines.append(
            "baseline NOT written: " + "; ".join(unlearned) + ". A row that does not beat its trivial baseline "
            "cannot show a regression: train it longer or tune it (peftbench tune --profile regress), or drop it"
        )
    elif update:
        cmd = command or _command(suite, reason.strip(), fresh)
        data = make_baseline(suite, run, reason.strip(), cmd, previous, learned)
        atomic_write_text(baseline, json.dumps(data, indent=1) + "\n")
        lines.append(f"baseline written: {baseline} ({len(data['rows'])} rows, reason: {reason.strip()})")
        code = 0
    elif regressed:
        code = 1
        lines.append(f"REGRESSION in {', '.join(regressed)}")
    else:
        code = 0
        lines.append("no regression")
    return RegressReport(code, verdicts, "\n".join(lines))


Learned = dict[tuple[str, str], tuple[float | None, str, dict[int, float]]]  # row -> (p, baseline, p per seed)


def _learned(run: SuiteRun) -> Learned:
    out: Learned = {}
    for key, r in run.rows.items():
        if r.references is None or not r.predictions:
            out[key] = (None, "", {})
            continue
        task = registry.tasks.get(r.task)
        out[key] = learned_p(task, r.method, r.values, r.predictions, r.references, r.data, r.train_rows)
    return out


def _unlearned(learned: Learned) -> list[str]:
    """Why an update must refuse: rows that did not learn pooled, then seeds of the other rows that did not alone
    (such a row sees a loss on its other seeds only)."""
    out = []
    for (t, m), (p, name, per_seed) in sorted(learned.items()):
        if p is not None and p > LEARNED_ALPHA:
            out.append(f"{t}/{m} did not learn (p = {p:.3g} against the {name}, α = {LEARNED_ALPHA:g})")
            continue
        out += [
            f"{t}/{m} seed {s} did not learn on its own (p = {ps:.3g}, α = {LEARNED_ALPHA:g})"
            for s, ps in per_seed.items()
            if ps > LEARNED_ALPHA
        ]
    return out


def _command(suite: Suite, reason: str, fresh: bool) -> str:
    """The CLI call that reproduces this baseline (options at their defaults left out)."""
    default = Suite()
    argv = ["peftbench", "regress", "--update", "--reason", reason] + (["--fresh"] if fresh else [])
    for key in ("model", "profile", "data"):
        if getattr(suite, key) != getattr(default, key):
            argv += [f"--{key}", str(getattr(suite, key))]
    for key in ("tasks", "methods", "seeds"):
        if getattr(suite, key) != getattr(default, key):
            argv += [f"--{key}", ",".join(str(v) for v in getattr(suite, key))]
    for s in suite.sets:
        argv += ["--set", s]
    return shlex.join(argv)


# --- CLI -----------------------------------------------------------------------------------------------------


def add_subcommand(sub) -> None:
    d = Suite()
    p = sub.add_parser("regress", help="CI accuracy gate: the fixed suite against results/baselines/regress.json")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (records in runs/)")
    p.add_argument("--baseline", type=Path, default=BASELINE_PATH, help="baseline JSON to compare with or write")
    p.add_argument("--update", action="store_true", help="rewrite the baseline from this run (needs --reason)")
    p.add_argument("--reason", default=None, help="why the baseline changes; recorded in it")
    p.add_argument("--fresh", action="store_true", help="rerun every run even when its record exists")
    p.add_argument("--model", default=d.model, help="suite model (alias, directory or hub id)")
    p.add_argument("--tasks", type=names, default=d.tasks, help="suite tasks, e.g. sst2,qqp")
    p.add_argument("--methods", type=names, default=d.methods, help="suite methods (default: every built-in)")
    p.add_argument("--seeds", type=int_list, default=d.seeds, help="suite seeds, e.g. 0,1")
    p.add_argument("--profile", default=d.profile, help="training profile")
    p.add_argument("--data", default=d.data, help="data source")
    add_set_option(p, "override a train or method setting for every run, e.g. --set lr=1e-5")
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "inline"],
        help="local: a process per run (default); inline: one at a time in this process",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="suite runs at once, one thread each (default: one per core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_regress)


def cmd_regress(args) -> int:
    import sys

    methods = tuple(args.methods)
    if not methods and not args.update and Path(args.baseline).is_file():
        # The suite is what the baseline was made of: a method added to peftbench since joins the gate with
        # `make regress-update` (or --methods), instead of making every CI run longer with "new" rows.
        methods = tuple(load_baseline(args.baseline).get("suite", {}).get("methods") or ())
    suite = Suite(
        model=args.model,
        tasks=tuple(args.tasks),
        methods=methods,
        seeds=tuple(args.seeds),
        profile=args.profile,
        sets=tuple(args.sets),
        data=args.data,
    )
    if not suite.tasks or not suite.seeds or not suite.method_names():
        raise UsageError("the suite needs at least one task, method and seed")
    report = regress(
        suite,
        args.results,
        args.baseline,
        update=args.update,
        reason=args.reason,
        fresh=args.fresh,
        executor=args.executor,
        progress=not args.quiet and sys.stderr.isatty(),
        jobs=args.jobs,
    )
    print(report.text)
    return report.exit_code
