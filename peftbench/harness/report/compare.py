"""`peftbench compare`: two methods on one task at one budget, paired by seed and by evaluation example.

Two sources of noise, two tests, both on the difference B - A of the task's primary metric:

- Over seeds (training randomness): the per-seed differences of the recorded primary metric; their mean, a 95%
  t-interval and a two-sided paired t-test. With fewer than 3 shared seeds this has almost no power.
- Over evaluation examples (test-set sampling): a paired bootstrap on the per-example predictions stored beside
  each record. The exact scheme: for each replicate r = 1..R and each shared seed s, draw N_s indices with
  replacement from that seed's N_s evaluation examples; A and B are scored on the *same* indices (paired), giving
  d[s, r] = m(B on idx) - m(A on idx). The replicate's difference is D[r] = mean over seeds of d[s, r]; the
  observed difference D is that mean on the full sets. The 95% CI is the 2.5th and 97.5th percentiles of D[r].
  The two-sided p-value shifts the bootstrap distribution to the null (mean 0):
  p = (1 + #{r : |D[r] - D| >= |D|}) / (R + 1). This answers "would these trained models differ on another test
  set of this size?"; seed-to-seed variation is the t-test's job.

The primary metric is recomputed on each resample by `TaskSpec.metric_on`; for metrics whose formula is known
(accuracy, binary F1/MCC, Pearson/Spearman, per-example SQuAD scores) a numpy version scores all resamples at
once, after checking that it agrees with `metric_on` on the full set and on two resamples.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.report.aggregate import metric_scale
from peftbench.harness.report.stats import SeedTest, paired_bootstrap, paired_t
from peftbench.records import NO_BUDGET, RunRecord, load_record, predictions_path, runs_dir

log = logging.getLogger(__name__)

MIN_SEEDS = 3


@dataclass(frozen=True)
class Side:
    """One method's successful records at the chosen budget, one per seed."""

    method: str
    budget: str
    records: dict[int, Path]
    primary: dict[int, float]


@dataclass(frozen=True)
class BootstrapTest:
    split: str
    examples: tuple[int, ...]  # per shared seed
    resamples: int
    diff: float
    ci: tuple[float, float]
    p: float
    vectorised: bool


@dataclass(frozen=True)
class Comparison:
    task: str
    primary_name: str
    higher_is_better: bool
    a: Side
    b: Side
    seeds: tuple[int, ...]
    seed_test: SeedTest
    bootstrap: BootstrapTest | None
    warnings: tuple[str, ...]


# --- records -----------------------------------------------------------------------------------------------------


def _requested_count(spec: str) -> int | None:
    from peftbench.config import parse_budget

    # A percentage depends on the model, so it matches by its spelling only.
    return None if spec.strip().endswith("%") else parse_budget(spec)


def collect(results: Path, task: str, method: str, budget: str | None, warnings: list[str]) -> Side:
    """The method's ok records for the task at `budget` (ignored for unbudgeted methods), newest per seed."""
    from peftbench import registry

    budgeted = registry.adapters.get(method).budgeted
    folder = runs_dir(results) / task / method
    found: dict[str, list[RunRecord]] = {}
    failed = 0
    for path in sorted(folder.glob("*.json")):
        loaded = load_record(path)
        if loaded.record is None:
            log.warning("skipping %s: %s", path, loaded.problem)
            continue
        if not loaded.ok:
            failed += 1
            continue
        found.setdefault(loaded.record.budget_spec, []).append(loaded.record)
    if not found:
        extra = f" ({failed} failed)" if failed else ""
        raise UsageError(f"no successful records for {task}/{method} under {folder}{extra}; run it first")
    if not budgeted:
        chosen = found.get(NO_BUDGET, [])
        label = NO_BUDGET
    elif budget is None:
        if len(found) > 1:
            raise UsageError(f"{task}/{method} has records at budgets {', '.join(sorted(found))}; pass --budget")
        label, chosen = next(iter(found.items()))
    else:
        wanted = None if budget == NO_BUDGET else _requested_count(budget)
        chosen = [
            r
            for spec, recs in found.items()
            for r in recs
            if spec == budget or (wanted is not None and spec != NO_BUDGET and r.config.budget_requested == wanted)
        ]
        label = budget
    if not chosen:
        raise UsageError(
            f"no successful records for {task}/{method} at budget {label}; budgets found: {', '.join(sorted(found))}"
        )
    by_seed: dict[int, list[RunRecord]] = {}
    for r in chosen:
        by_seed.setdefault(r.config.seed, []).append(r)
    records, primary = {}, {}
    for seed, recs in sorted(by_seed.items()):
        recs.sort(key=lambda r: (r.created, str(r.path)))
        if len(recs) > 1:
            warnings.append(
                f"{task}/{method} @{label} has {len(recs)} records for seed {seed} (different configs); "
                f"using the newest, {recs[-1].path.name}"
            )
        records[seed] = recs[-1].path
        primary[seed] = float(recs[-1].metrics.primary)
    return Side(method, label, records, primary)


def load_predictions(record_file: Path, split: str) -> tuple[list, list]:
    path = predictions_path(record_file)
    if not path.is_file():
        raise UsageError(
            f"{path} is missing: the paired bootstrap needs the per-example predictions written beside each "
            f"record; rerun that run, or pass --resamples 0 for the seed-level test only"
        )
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path} ({type(e).__name__}: {e}); rerun that run") from None
    for entry in lines:
        if isinstance(entry, dict) and entry.get("split") == split:
            preds, refs = entry.get("predictions"), entry.get("references")
            if not isinstance(preds, list) or not isinstance(refs, list) or len(preds) != len(refs) or not refs:
                raise UsageError(f"{path}: split {split!r} has malformed predictions/references; rerun that run")
            return preds, refs
    raise UsageError(f"{path} has no predictions for split {split!r}; rerun that run")


def primary_split(task) -> str:
    """The evaluation split whose metrics are unprefixed, i.e. the one the primary metric comes from."""
    return next((e.split for e in task.eval_splits if e.prefix == ""), task.eval_splits[0].split)


def compare(
    results: Path,
    task: str,
    a: str,
    b: str,
    budget: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    from peftbench import registry

    spec = registry.tasks.get(task)
    if a == b:
        raise UsageError(f"compare needs two different methods, got {a!r} twice")
    if resamples < 0:
        raise UsageError(f"--resamples must be >= 0, got {resamples}")
    warnings: list[str] = []
    side_a = collect(results, task, a, budget, warnings)
    side_b = collect(results, task, b, budget, warnings)
    if budget is not None and side_a.budget == NO_BUDGET and side_b.budget == NO_BUDGET:
        warnings.append(f"--budget {budget} ignored: {a} and {b} are both unbudgeted")
    seeds = tuple(sorted(set(side_a.records) & set(side_b.records)))
    if not seeds:
        raise UsageError(
            f"{a} has seeds {_seeds(side_a)} and {b} has seeds {_seeds(side_b)} on {task}: none in common; "
            f"run both with the same --seeds"
        )
    if len(seeds) < MIN_SEEDS:
        warnings.append(
            f"only {len(seeds)} shared seed(s): the seed-level test has little or no power; "
            f"run at least {MIN_SEEDS} seeds (--seeds 0,1,2)"
        )
    seed_test = paired_t([side_b.primary[s] - side_a.primary[s] for s in seeds])
    boot = None
    if resamples > 0:
        split = primary_split(spec)
        pairs = []
        for s in seeds:
            preds_a, refs_a = load_predictions(side_a.records[s], split)
            preds_b, refs_b = load_predictions(side_b.records[s], split)
            if refs_a != refs_b:
                raise UsageError(
                    f"seed {s}: {a} and {b} were evaluated on different examples ({len(refs_a)} vs {len(refs_b)} "
                    f"references); compare runs with the same data and eval_rows"
                )
            pairs.append((preds_a, preds_b, refs_a))
        diff, ci, p, vectorised, dropped = paired_bootstrap(spec, pairs, resamples, seed)
        if dropped:
            warnings.append(f"{dropped} of {resamples} bootstrap replicates had an undefined metric and were dropped")
        boot = BootstrapTest(split, tuple(len(r) for _, _, r in pairs), resamples, diff, ci, p, vectorised)
    return Comparison(
        task, spec.primary_metric, spec.higher_is_better, side_a, side_b, seeds, seed_test, boot, tuple(warnings)
    )


def _seeds(side: Side) -> str:
    return ",".join(str(s) for s in sorted(side.records)) or "none"


# --- output --------------------------------------------------------------------------------------------------------


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def format_comparison(c: Comparison) -> str:
    from tabulate import tabulate

    k = metric_scale(c.task)
    unit = " (points)" if k != 1.0 else ""
    budgets = {c.a.budget, c.b.budget} - {NO_BUDGET}
    at = f" @ {', '.join(sorted(budgets))}" if budgets else ""
    rows = [
        {
            "seed": s,
            f"A {c.a.method}": f"{c.a.primary[s] * k:.2f}",
            f"B {c.b.method}": f"{c.b.primary[s] * k:.2f}",
            "B - A": f"{(c.b.primary[s] - c.a.primary[s]) * k:+.2f}",
        }
        for s in c.seeds
    ]
    st = c.seed_test
    lines = [
        f"{c.task}{at}: A = {c.a.method} ({c.a.budget}) vs B = {c.b.method} ({c.b.budget}), primary metric "
        f"{c.primary_name}{unit}, {len(c.seeds)} shared seed(s)",
        tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True),
        "",
    ]
    if st.n >= 2:
        lines.append(
            f"seeds (paired t-test, n = {st.n}): B - A = {st.mean * k:+.2f}, 95% CI [{st.ci[0] * k:+.2f}, "
            f"{st.ci[1] * k:+.2f}], p = {_fmt_p(st.p)}"
        )
    else:
        lines.append(f"seeds: B - A = {st.mean * k:+.2f} from a single seed: no interval or test")
    bt = c.bootstrap
    if bt is not None:
        n_ex = ", ".join(str(n) for n in sorted(set(bt.examples)))
        lines.append(
            f"examples (paired bootstrap, {bt.resamples} resamples of {n_ex} '{bt.split}' examples per seed, "
            f"averaged over seeds): B - A = {bt.diff * k:+.2f}, 95% CI [{bt.ci[0] * k:+.2f}, {bt.ci[1] * k:+.2f}], "
            f"p = {_fmt_p(bt.p)}{' (the floor for this many resamples)' if bt.p * (bt.resamples + 1) < 1.5 else ''}"
        )
    better = c.b.method if (st.mean > 0) == c.higher_is_better else c.a.method
    if st.mean != 0:
        lines.append(f"{better} is ahead on average ({'higher' if c.higher_is_better else 'lower'} is better).")
    return "\n".join(lines)


# --- CLI -----------------------------------------------------------------------------------------------------------


def add_subcommand(sub) -> None:
    p = sub.add_parser("compare", help="paired comparison of two methods on one task at one budget")
    p.add_argument("a_method", metavar="A_METHOD")
    p.add_argument("b_method", metavar="B_METHOD")
    p.add_argument("--task", required=True)
    p.add_argument("--budget", default=None, help="budget of the budgeted method(s); full FT is matched unbudgeted")
    p.add_argument("--results", default="results", type=Path, help="results directory (records under runs/)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates; 0 skips the bootstrap")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap's random indices")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    import sys

    c = compare(args.results, args.task, args.a_method, args.b_method, args.budget, args.resamples,
                args.bootstrap_seed)  # fmt: skip
    for w in c.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(format_comparison(c))
    return 0
