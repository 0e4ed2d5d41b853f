"""The leaderboard as one CSV: a row per (table, method row), raw values (counts as integers, metrics on the
task's own scale), and the claims as columns, so a spreadsheet can filter what the rendered tables mark."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from peftbench.harness.report.aggregate import NATIVE, implementation
from peftbench.harness.report.formats import Cell, Row, Table, to_csv

log = logging.getLogger(__name__)

# The `settings` column replaces the frame's `variant` hash: it says in which settings a row's runs differ from
# the other rows of the same method in its table (empty when the method has one row there).
HEADERS = (
    "task", "method", "budget", "settings", "profile", "primary metric", "mean", "std", "ci95", "n", "failed",
    "seeds", "top group", "learned", "learned p", "learned test", "trivial baseline", "trivial baseline name",
    "adapter params", "adapter params peak", "budget requested", "trainable", "samples per s", "peak memory bytes",
)  # fmt: skip


def _f(v) -> float:
    if v is None or isinstance(v, str):
        return math.nan
    return float(v)


def _i(v) -> int | float:
    v = _f(v)
    return math.nan if math.isnan(v) else int(round(v))


def leaderboard_csv(judged: Sequence) -> str:
    metric_names = sorted(
        {k[len("metric.") : -len(".mean")] for j in judged for r in j.rows for k in r.index
         if k.startswith("metric.") and k.endswith(".mean")}
    )  # fmt: skip
    # As the rendered tables: an implementation column only when some row did not run native code.
    show_impl = any(implementation(r) != NATIVE for j in judged for r in j.rows)
    headers = HEADERS + tuple(f"{m} {s}" for m in metric_names for s in ("mean", "std"))
    headers += ("implementation",) if show_impl else ()
    rows = []
    for j in judged:
        base = j.evidence.baseline if j.evidence is not None else None
        for r, name, variant in zip(j.rows, j.names, j.variants, strict=True):
            learned = j.claims.learned.get(name) if j.claims else None
            top = "" if j.claims is None else int(j.claims.top.in_group(name))
            flag = "" if learned is None or learned.not_learned is None else int(not learned.not_learned)
            base_value = base.primary(_spec(j.task)) if base is not None and _spec(j.task) is not None else None
            values = [
                j.task, r["method"], r["budget"], variant or "", j.profile, r.get("primary_name") or "",
                _f(r.get("primary.mean")), _f(r.get("primary.std")), _f(r.get("primary.ci95")), int(r["n"]),
                int(r.get("failed") or 0), r.get("seeds") or "", top, flag,
                math.nan if learned is None else learned.p, "" if learned is None else learned.test,
                _f(base_value), "" if base is None else base.name,
                _i(r.get("adapter")), _i(r.get("adapter_peak")), _i(r.get("budget_requested")), _i(r.get("trainable")),
                _f(r.get("samples_per_s")), _i(r.get("peak_memory_bytes")),
            ]  # fmt: skip
            for m in metric_names:
                values += [_f(r.get(f"metric.{m}.mean")), _f(r.get(f"metric.{m}.std"))]
            values += [implementation(r)] if show_impl else []
            rows.append(Row(tuple(Cell(str(v), v) for v in values)))
    return to_csv(Table("", headers, tuple(rows)))


def _spec(task: str):
    from peftbench.harness.report.leaderboard import _task_spec

    return _task_spec(task)
