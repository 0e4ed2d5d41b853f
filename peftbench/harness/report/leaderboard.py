"""Leaderboard tables from the aggregated frame: per task, profile and budget, and a summary per task family.

A table claims only what its tests support (claims.judge_table): the primary metric of the top group is bold
(the best mean and every method not significantly worse than it; nothing when that is every method), a cell
that is not significantly better than the task's trivial baseline carries a mark, and the trivial baseline is a
row of its own. Each format (formats.py) shows the same judged table in its own markup.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from peftbench.errors import UsageError
from peftbench.harness.report.aggregate import NATIVE, count_label, implementation, metric_scale
from peftbench.harness.report.baselines import MSE, Baseline
from peftbench.harness.report.claims import TableClaims, judge_table
from peftbench.harness.report.evidence import RowRuns, TableEvidence, load_table
from peftbench.harness.report.formats import Cell, Mark, Row, Table, to_html, to_latex, to_markdown
from peftbench.records import NO_BUDGET

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "latex", "html")
TRIVIAL = "trivial"
OFF_TOLERANCE = 0.05
READING = (
    "cells: mean ± std over n seeds (n: runs that finished; 'k failed': runs without a result); budget: requested "
    "adapter parameters, head excluded; adapter params: the count at the end of training, (±x%) when more than 5% "
    "off the budget"
)
# One definition of "peak memory" per device, named under every table that shows it.
MEMORY_KINDS = {
    "process_max_rss": "the run process's maximum resident set size (CPU: weights, activations, optimizer state, "
    "data and the Python runtime; the OS's figure, not tensor bytes)",
    "cuda_max_allocated": "the CUDA caching allocator's peak of allocated tensor bytes on the run's GPU "
    "(torch.cuda.max_memory_allocated; the process's host memory is not included)",
}
VERSUS_TRIVIAL = (
    "vs trivial: the row's mean minus the trivial baseline on the learned test's metric (the primary metric, or "
    "for regression the mean squared error, where lower is better), and that test's one-sided p; † marks p ≥ α"
)
VARIANT_NOTE = "variant: the settings in which runs of one method differ; runs of different variants never pool"
IMPLEMENTATION_NOTE = "implementation: whose layers ran the method, peftbench's own (native) or peft's tuners (peft)"


@dataclass(frozen=True)
class Judged:
    """One task table: its rows (summary rows, in display order), their names, the evidence and the claims."""

    task: str
    profile: str
    budget: str
    rows: tuple[pd.Series, ...]
    names: tuple[str, ...]
    variants: tuple[str | None, ...]
    evidence: TableEvidence
    claims: TableClaims | None

    @property
    def title(self) -> str:
        where = self.task if self.budget == NO_BUDGET else f"{self.task} @ {self.budget}"
        return f"{where} (profile {self.profile})"


# --- helpers -----------------------------------------------------------------------------------------------------


def _num(v) -> float | None:
    if v is None or isinstance(v, str):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _pm(mean, std, scale: float) -> str:
    mean, std = _num(mean), _num(std)
    if mean is None:
        return "missing"
    return f"{mean * scale:.2f}" if std is None else f"{mean * scale:.2f} ± {std * scale:.2f}"


def _count(v) -> int | float:
    v = _num(v)
    return math.nan if v is None else int(round(v))


def _off(achieved, requested) -> str:
    """Flags a count more than 5% off its budget."""
    achieved, requested = _num(achieved), _num(requested)
    if not achieved or not requested:
        return ""
    off = (achieved - requested) / requested
    return f" ({off:+.0%})" if abs(off) > OFF_TOLERANCE else ""


def _task_spec(task: str):
    from peftbench import registry

    try:
        return registry.tasks.get(task)
    except UsageError:
        return None  # records of a task whose plugin is not installed here: shown, never judged


def _variant_labels(rows: Sequence[pd.Series]) -> list[str | None]:
    """Per row, the settings that tell it apart from other rows of its method in the table (None: the only one)."""
    by_method: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_method.setdefault(r["method"], []).append(i)
    labels: list[str | None] = [None] * len(rows)
    for idx in by_method.values():
        if len(idx) < 2:
            continue
        flat = [json.loads(rows[i]["settings"]) for i in idx]
        keys = sorted({k for f in flat for k in f if len({json.dumps(g.get(k), sort_keys=True) for g in flat}) > 1})
        for i, f in zip(idx, flat, strict=True):
            labels[i] = " ".join(f"{k}={f.get(k)}" for k in keys) or str(rows[i]["variant"])
    return labels


# --- judging -----------------------------------------------------------------------------------------------------


def judge_tables(summary: pd.DataFrame) -> list[Judged]:
    """Every task table, judged. Unbudgeted rows (full FT, the probe) appear in every budget's table."""
    out = []
    for (task, profile), g in summary.groupby(["task", "profile"], sort=True):
        budgets = sorted(b for b in g["budget"].unique() if b != NO_BUDGET) or [NO_BUDGET]
        spec = _task_spec(task)
        for budget in budgets:
            block = g[(g["budget"] == budget) | (g["budget"] == NO_BUDGET)].sort_values(["budget", "method"])
            rows = tuple(r for _, r in block.iterrows())
            variants = _variant_labels(rows)
            names = tuple(
                r["method"] if v is None else f"{r['method']} [{v}]" for r, v in zip(rows, variants, strict=True)
            )
            runs = [
                RowRuns(n, tuple(r["runs"]) if isinstance(r.get("runs"), tuple) else ())
                for n, r in zip(names, rows, strict=True)
            ]
            evidence = load_table(spec, runs) if spec is not None else None
            claims = None
            if evidence is not None and any(m.scores for m in evidence.runs):
                claims = judge_table(spec, evidence.runs, evidence.references, evidence.baseline)
            out.append(Judged(task, profile, budget, rows, names, tuple(variants), evidence, claims))
    return out


# --- task tables -------------------------------------------------------------------------------------------------


def _metric_names(rows: Sequence[pd.Series]) -> list[str]:
    found = set()
    for r in rows:
        found |= {k[len("metric.") : -len(".mean")] for k in r.index if k.startswith("metric.") and k.endswith(".mean")
                  and _num(r[k]) is not None}  # fmt: skip
    return sorted(found)


def task_table(j: Judged) -> Table:
    spec = _task_spec(j.task)
    scale = metric_scale(j.task)
    primary = next((r["primary_name"] for r in j.rows if isinstance(r.get("primary_name"), str)), "primary")
    others = [m for m in _metric_names(j.rows) if m != primary]
    show_peak = any(
        _num(r.get("adapter_peak")) and _num(r.get("adapter_peak")) != _num(r.get("adapter")) for r in j.rows
    )
    notes = sorted({r["method_note"] for r in j.rows if r.get("method_note")})
    note_marks = tuple(Mark(f"method_note_{i}", "§" * (i + 1), n) for i, n in enumerate(notes))
    # Whose code ran each row, shown only where a table holds a non-native row, so native-only tables (and the
    # renderings committed from them) stay as they were.
    impls = [implementation(r) for r in j.rows]
    show_impl = any(i != NATIVE for i in impls)
    headers = ["method", *(["implementation"] if show_impl else []), "budget", f"{primary} (primary)", "n"]
    headers += ["vs trivial", *others]
    headers += ["adapter params"]
    headers += ["peak adapter params"] if show_peak else []
    headers += ["trainable", "samples/s", "peak MiB"]
    table_rows = []
    for i, (r, name) in enumerate(zip(j.rows, j.names, strict=True)):
        bold = j.claims.bold(name) if j.claims else False
        marks = j.claims.marks(name) if j.claims else ()
        n = int(r["n"])
        failed = int(r.get("failed") or 0)
        note = (f"method_note_{notes.index(r['method_note'])}",) if r.get("method_note") else ()
        cells = [
            Cell(r["method"]),
            *([Cell(impls[i])] if show_impl else []),
            Cell(r["budget"]),
            Cell(_pm(r.get("primary.mean"), r.get("primary.std"), scale), _num(r.get("primary.mean")), bold, marks),
            Cell(f"{n} ({failed} failed)" if failed else str(n), n),
            j.claims.versus_trivial(name, scale) if j.claims else Cell("-", math.nan),
            *(
                Cell(_pm(r.get(f"metric.{m}.mean"), r.get(f"metric.{m}.std"), scale), _num(r.get(f"metric.{m}.mean")))
                for m in others
            ),  # fmt: skip
            Cell(
                count_label(_num(r.get("adapter"))) + _off(r.get("adapter"), r.get("budget_requested")),
                _count(r.get("adapter")),
                marks=note,
            ),  # fmt: skip
        ]
        if show_peak:
            cells.append(Cell(count_label(_num(r.get("adapter_peak"))), _count(r.get("adapter_peak"))))
        sps = _num(r.get("samples_per_s"))
        mem = _num(r.get("peak_memory_bytes"))
        cells += [
            Cell(count_label(_num(r.get("trainable"))), _count(r.get("trainable"))),
            Cell("-" if sps is None else f"{sps:.1f}", sps),
            Cell("-" if mem is None else f"{mem / 2**20:.0f}", _count(mem)),
        ]
        table_rows.append(Row(tuple(cells), j.variants[i]))
    baseline = j.evidence.baseline if j.evidence is not None else None
    if baseline is not None and baseline.available:
        table_rows.append(_baseline_row(baseline, spec, primary, others, scale, len(headers), show_impl))
    legend = [READING]
    if j.claims is not None:
        legend += j.claims.legend(scale, " points")
        legend.append(VERSUS_TRIVIAL)
    elif baseline is not None:
        legend.append(f"no method has a result to judge; trivial baseline: {baseline.note or baseline.name}")
    if baseline is not None:
        legend += [f"trivial baseline {m}: {why}" for m, why in baseline.undefined.items()]
        if _num(baseline.metrics.get(MSE)) is not None:
            legend.append(f"trivial baseline mse: {baseline.metrics[MSE]:.4f} (what the learned test compares)")
    kinds = sorted({k for r in j.rows for k in str(r.get("peak_memory_kind") or "").split(",") if k})
    if kinds:
        legend.append("peak MiB: " + "; ".join(f"{MEMORY_KINDS.get(k, k)}" for k in kinds))
    if any(v for v in j.variants):
        legend.append(VARIANT_NOTE)
    if show_impl:
        legend.append(IMPLEMENTATION_NOTE)
    if j.evidence is not None:
        legend += list(j.evidence.notes)
    marks = (j.claims.mark_defs if j.claims else ()) + note_marks
    return Table(j.title, tuple(headers), tuple(table_rows), tuple(legend), marks)


def _baseline_row(
    b: Baseline, spec, primary: str, others: list[str], scale: float, width: int, impl: bool = False
) -> Row:
    def value(m: str) -> Cell:
        v = _num(b.metrics.get(m))
        if v is None:
            return Cell("undefined" if m in b.undefined else "-")
        return Cell(f"{v * scale:.2f}", v)

    cells = [
        Cell(f"{TRIVIAL}: {b.name}"),
        *([Cell("-")] if impl else []),
        Cell(NO_BUDGET),
        value(primary),
        Cell("-", math.nan),
        Cell("-", math.nan),  # vs trivial
        *(value(m) for m in others),
    ]
    cells += [Cell("-", math.nan)] * (width - len(cells))
    return Row(tuple(cells))


# --- rendering ---------------------------------------------------------------------------------------------------


def render(summary: pd.DataFrame, fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if summary.empty:
        return "no run records found"
    from peftbench.harness.report.family import family_tables

    judged = judge_tables(summary)
    if fmt == "csv":
        from peftbench.harness.report.csv_table import leaderboard_csv

        return leaderboard_csv(judged)
    tables = [task_table(j) for j in judged] + family_tables(judged)
    if fmt == "html":
        return to_html(tables, title="peftbench leaderboard")
    render_one = to_markdown if fmt == "md" else to_latex
    return "\n".join(render_one(t) for t in tables)
