"""A summary table per task family (GLUE): one row per method, one column per task, and the average over the
tasks every row has, named in its header. Its best mark follows the task tables' rule, over the per-task tests:
the best average and every row that no averaged task separates from it."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from peftbench.harness.report.formats import Cell, Row, Table
from peftbench.harness.report.significance import ALPHA, MIN_SEEDS, MethodRuns, holm_adjusted, versus
from peftbench.records import NO_BUDGET

log = logging.getLogger(__name__)

TOP_LEGEND = (
    "bold: best average and every row no averaged task separates from it (per task, the two-sided tests of the "
    "task tables against the best-average row; Holm over {m} comparison(s), α = {alpha})"
)
NO_MARK = "no row marked: no averaged task separates any row from the best average (Holm over {m}, α = {alpha})"


def family_tables(judged: Sequence) -> list[Table]:
    """One summary per (family, profile, budget) that spans at least two tasks of a family whose primary metrics
    are all higher-is-better (an average of mixed directions would mean nothing)."""
    from peftbench.harness.report.leaderboard import _task_spec

    groups: dict[tuple[str, str], list] = {}
    for j in judged:
        spec = _task_spec(j.task)
        if spec is not None and j.claims is not None and spec.higher_is_better:
            groups.setdefault((spec.family, j.profile), []).append(j)
    tables = []
    for (family, profile), js in sorted(groups.items()):
        budgets = sorted({j.budget for j in js if j.budget != NO_BUDGET}) or [NO_BUDGET]
        for budget in budgets:
            # A task run only unbudgeted joins every budget's summary, as unbudgeted rows join every table.
            chosen = {j.task: j for j in js if j.budget in (budget, NO_BUDGET)}
            if len(chosen) >= 2:
                tables.append(_summary(family, profile, budget, list(chosen.values())))
    return tables


def _summary(family: str, profile: str, budget: str, js: list) -> Table:
    from peftbench import registry

    tasks = [j.task for j in js]
    # name -> task -> (runs, references, scale)
    cells: dict[str, dict[str, tuple[MethodRuns, tuple | None, float]]] = {}
    budget_of: dict[str, str] = {}
    for j in js:
        scale = registry.tasks.get(j.task).metric_scale
        for name, r, runs in zip(j.names, j.rows, j.evidence.runs, strict=True):
            if runs.scores:
                cells.setdefault(name, {})[j.task] = (runs, j.evidence.references, scale)
            else:
                cells.setdefault(name, {})
            budget_of[name] = r["budget"]
    names = sorted(cells, key=lambda n: (budget_of[n] != NO_BUDGET, n))
    common = [t for t in tasks if all(t in cells[n] for n in names)]
    avg = {n: (sum(cells[n][t][0].mean * cells[n][t][2] for t in common) / len(common) if common else math.nan)
           for n in names}  # fmt: skip
    members, legend_top = _top(cells, avg, common)
    avg_header = f"avg over {', '.join(common)}" if common else "avg (no task common to every row)"
    headers = ("method", "budget", *tasks, avg_header)
    rows = []
    for n in names:
        row = [Cell(n), Cell(budget_of[n])]
        for t in tasks:
            c = cells[n].get(t)
            row.append(Cell("missing") if c is None else Cell(f"{c[0].mean * c[2]:.2f}", c[0].mean * c[2]))
        a = avg[n]
        row.append(Cell("-" if math.isnan(a) else f"{a:.2f}", a, bold=n in members))
        rows.append(Row(tuple(row)))
    legend = [f"{avg_header}: mean over seeds of each task's primary metric, averaged over the tasks every row has"]
    left = [t for t in tasks if t not in common]
    if left:
        legend.append(f"left out of the average (missing for some row): {', '.join(left)}")
    legend.append(legend_top)
    where = family.upper() + " summary" + ("" if budget == NO_BUDGET else f" @ {budget}")
    return Table(f"{where} (profile {profile}; primary metrics)", headers, tuple(rows), tuple(legend))


def _top(cells: dict, avg: dict[str, float], common: list[str]) -> tuple[set[str], str]:
    ranked = [n for n, a in avg.items() if not math.isnan(a)]
    if len(ranked) < 2:
        return set(), NO_MARK.format(m=0, alpha=ALPHA)
    from peftbench import registry

    best = max(ranked, key=lambda n: avg[n])  # family_tables keeps only higher-is-better families
    tests = []
    for n in ranked:
        if n == best:
            continue
        for t in common:
            b_runs, refs, _ = cells[best][t]
            o_runs, _, _ = cells[n][t]
            tests.append((n, versus(registry.tasks.get(t), b_runs, o_runs, refs, MIN_SEEDS)))
    adjusted = holm_adjusted([pt.p for _, pt in tests])
    separated = {
        n for (n, pt), q in zip(tests, adjusted, strict=True) if not math.isnan(q) and q <= ALPHA and pt.diff > 0
    }
    members = {n for n in ranked if n not in separated}
    m = sum(1 for _, pt in tests if not math.isnan(pt.p))
    if len(members) == len(ranked):
        return set(), NO_MARK.format(m=m, alpha=ALPHA)
    return members, TOP_LEGEND.format(m=m, alpha=ALPHA)
