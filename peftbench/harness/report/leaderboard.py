"""Leaderboard tables from the aggregated frame: per task and budget, and a GLUE summary across tasks."""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from peftbench.errors import UsageError
from peftbench.harness.report.aggregate import count_label, metric_scale
from peftbench.records import NO_BUDGET

FORMATS = {"md": "github", "latex": "latex", "html": "html"}


def _pm(mean: float | None, std: float | None, scale: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "missing"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def _off(achieved, requested) -> str:
    """Flags a count more than 5% off its budget (AdaLoRA in triplet mode decides its count while training)."""
    if not achieved or not requested:
        return ""
    off = (achieved - requested) / requested
    return f" ({off:+.0%})" if abs(off) > 0.05 else ""


def _mib(b) -> str:
    return "-" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 2**20:.0f}"


def _get(row: pd.Series, key: str):
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def task_tables(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per task, profile and budget. Unbudgeted rows (full FT) appear in every budget's table."""
    out = []
    for (task, profile), g in summary.groupby(["task", "profile"], sort=True):
        scale = metric_scale(task)
        budgets = sorted(b for b in g["budget"].unique() if b != NO_BUDGET)
        metric_names = sorted(
            {
                c[len("metric.") : -len(".mean")]
                for c in g.columns
                if c.startswith("metric.") and c.endswith(".mean") and g[c].notna().any()
            }
        )
        # Variants tell apart runs of one method that differ in more than the seed (e.g. another --set).
        variants = g.groupby(["method", "budget"])["variant"].transform("nunique")
        for budget in budgets or [NO_BUDGET]:
            rows = g[(g["budget"] == budget) | (g["budget"] == NO_BUDGET)]
            best = rows["primary.mean"].max() if "primary.mean" in rows and rows["primary.mean"].notna().any() else None
            table = []
            for i, r in rows.sort_values(["budget", "method"]).iterrows():
                primary = _pm(_get(r, "primary.mean"), _get(r, "primary.std"), scale)
                if best is not None and _get(r, "primary.mean") == best:
                    primary = f"**{primary}**"
                entry = {
                    "method": r["method"] if variants[i] == 1 else f"{r['method']} [{r['variant']}]",
                    "budget": r["budget"],
                    f"{r['primary_name']} (primary)": primary,
                    "n": int(r["n"]),
                }
                if r.get("failed"):
                    entry["n"] = f"{int(r['n'])} ({int(r['failed'])} failed)"
                for m in metric_names:
                    if m != r["primary_name"]:
                        entry[m] = _pm(_get(r, f"metric.{m}.mean"), _get(r, f"metric.{m}.std"), scale)
                entry["adapter params"] = count_label(_get(r, "adapter")) + _off(
                    _get(r, "adapter"), _get(r, "budget_requested")
                )
                entry["trainable"] = count_label(_get(r, "trainable"))
                sps = _get(r, "samples_per_s")
                entry["samples/s"] = "-" if sps is None else f"{sps:.1f}"
                entry["peak MiB"] = _mib(_get(r, "peak_memory_bytes"))
                table.append(entry)
            title = task if budget == NO_BUDGET else f"{task} @ {budget}"
            out.append((f"{title} (profile {profile})", pd.DataFrame(table)))
    return out


def glue_summary(summary: pd.DataFrame) -> pd.DataFrame | None:
    """One row per (method, budget), one column per GLUE task (primary metric mean) and their average."""
    glue_tasks = [t for t in sorted(summary["task"].unique()) if metric_scale(t) == 100.0]
    if not glue_tasks:
        return None
    g = summary[summary["task"].isin(glue_tasks)]
    budgets = sorted(b for b in g["budget"].unique() if b != NO_BUDGET) or [NO_BUDGET]
    rows = []
    for budget in budgets:
        block = g[(g["budget"] == budget) | (g["budget"] == NO_BUDGET)]
        entries = []
        for method, m in block.groupby("method", sort=True):
            entry = {"method": method, "budget": budget if (m["budget"] != NO_BUDGET).any() else NO_BUDGET}
            vals = []
            for t in glue_tasks:
                r = m[m["task"] == t]
                v = r["primary.mean"].iloc[0] if len(r) and "primary.mean" in r else math.nan
                entry[t] = v * 100 if not math.isnan(v) else math.nan
                vals.append(entry[t])
            entry["GLUE avg"] = sum(vals) / len(vals) if not any(math.isnan(v) for v in vals) else math.nan
            entries.append(entry)
        best = max((e["GLUE avg"] for e in entries if not math.isnan(e["GLUE avg"])), default=None)
        for e in entries:
            e["table budget"] = budget
            e["best"] = "*" if best is not None and e["GLUE avg"] == best else ""
            rows.append(e)
    return pd.DataFrame(rows)


def render(summary: pd.DataFrame, fmt: str = "md") -> str:
    if summary.empty:
        return "no run records found"
    if fmt == "csv":
        return summary.to_csv(index=False)
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; valid formats: md, csv, latex, html")
    parts = []
    for title, table in task_tables(summary):
        parts.append(_heading(title, fmt))
        parts.append(tabulate(table, headers="keys", tablefmt=FORMATS[fmt], showindex=False, disable_numparse=True))
    glue = glue_summary(summary)
    if glue is not None and glue["GLUE avg"].notna().any() and len(glue.columns) > 6:
        shown = glue.copy()
        for c in shown.columns:
            if shown[c].dtype.kind == "f":
                shown[c] = shown[c].map(lambda v: "missing" if math.isnan(v) else f"{v:.2f}")
        parts.append(_heading("GLUE summary (primary metric, mean over seeds; * best average per budget)", fmt))
        parts.append(tabulate(shown, headers="keys", tablefmt=FORMATS[fmt], showindex=False, disable_numparse=True))
    return "\n\n".join(parts) + "\n"


def _heading(title: str, fmt: str) -> str:
    if fmt == "html":
        return f"<h3>{title}</h3>"
    if fmt == "latex":
        return f"% {title}"
    return f"### {title}"
