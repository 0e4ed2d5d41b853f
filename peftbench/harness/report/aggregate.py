"""Records into pandas: one row per run, then mean, std, n and a 95% t-interval per (task, method, budget)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from peftbench.adapters.base import fmt_count
from peftbench.config import to_jsonable
from peftbench.records import Params, Perf, RunRecord, iter_records

# Runs are pooled over seeds only when everything but the seed is the same (the variant), so records made
# with another profile, data or --set never mix into one mean.
GROUP = ["task", "method", "budget", "profile", "variant"]


def record_row(rec: RunRecord) -> dict:
    """One run as a row: what tables, plots and `peftbench.sweep` show of it."""
    cfg, params, perf, metrics = rec.config, rec.params or _NO_PARAMS, rec.perf or Perf(), rec.metrics
    row = {
        "task": cfg.task,
        "method": cfg.method,
        "implementation": rec.implementation,
        "budget": rec.budget_spec,
        "budget_requested": cfg.budget_requested,
        "seed": cfg.seed,
        "model": cfg.model.model_id,
        "profile": cfg.profile or "-",
        "variant": rec.variant,
        "status": rec.status,
        "error": rec.error,
        "primary_name": metrics.primary_name,
        "primary": metrics.primary,
        "adapter": params.adapter,
        "adapter_peak": params.adapter_peak,
        "trainable": params.trainable,
        "head": params.head,
        "total": params.total,
        "samples_per_s": perf.train_samples_per_second,
        "tokens_per_s": perf.train_tokens_per_second,
        "peak_memory_bytes": perf.peak_memory_bytes,
        "peak_memory_kind": perf.peak_memory_kind,
        "step_ms": perf.step_time_ms_median,
        "train_seconds": perf.train_seconds,
        "config_hash": rec.config_hash,
        # What the leaderboard needs beyond the numbers: the file (predictions lie beside it), the settings that
        # tell variants apart, and the method's own note on how it met its budget.
        "record": str(rec.path) if rec.path is not None else None,
        "settings": _settings(rec),
        "method_note": _method_note(cfg.method, cfg.method_config),
    }
    for k, v in metrics.all.items():
        if isinstance(v, (int, float)):
            row[f"metric.{k}"] = float(v)
    return row


def _settings(rec: RunRecord) -> str:
    """The resolved config minus the seed, flattened to `key=value` pairs (JSON), to name what variants differ in."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value

    resolved = to_jsonable(rec.config)
    for key in ("seed", "model"):
        resolved.pop(key, None)
    walk("", resolved)
    flat["model"] = rec.config.model.model_id
    return json.dumps(flat, sort_keys=True, default=str)


def _method_note(method: str, method_config: dict) -> str:
    from peftbench import registry
    from peftbench.errors import UsageError

    try:
        return registry.adapters.get(method).table_note(method_config)
    except UsageError:  # a plugin not installed here
        return ""


_NO_PARAMS = Params(None, None, None, None)  # type: ignore[arg-type]  # a failed run counted nothing


def runs_frame(results: Path, include_failed: bool = True) -> pd.DataFrame:
    rows = [record_row(r.record) for r in iter_records(results) if r.record is not None]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if not include_failed:
        df = df[df["status"] == "ok"]
    return df.reset_index(drop=True)


NATIVE = "native"


def implementation(row) -> str:
    """Whose code ran a summary or run row ('native' or 'peft', Adapter.implementation as recorded); rows of records
    made before the field existed, and frames without the column, are native."""
    v = row.get("implementation")
    return v if isinstance(v, str) and v else NATIVE


def count_label(n, m_decimals: int = 3) -> str:
    """A parameter count as tables and plots show it: millions from 100K up, else thousands; '-' when missing."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return fmt_count(float(n), m_decimals)


def metric_scale(task: str) -> float:
    """How tables show a task's metrics (GLUE's fractions as percentages; SQuAD's are already 0-100)."""
    from peftbench import registry
    from peftbench.errors import UsageError

    try:
        return registry.tasks.get(task).metric_scale
    except UsageError:  # records of a task whose plugin is not installed here: shown as stored
        return 1.0


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% interval of the mean (t distribution, n-1 dof); NaN when n < 2."""
    v = values.dropna()
    n = len(v)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method, budget): mean/std/n/ci95 of every metric and the cost columns."""
    if df.empty:
        return df
    ok = df[df["status"] == "ok"]
    metric_cols = ["primary"] + sorted(c for c in df.columns if c.startswith("metric."))
    cost_cols = [
        "adapter",
        "adapter_peak",
        "trainable",
        "head",
        "samples_per_s",
        "tokens_per_s",
        "peak_memory_bytes",
        "step_ms",
    ]
    out = []
    for key, g in df.groupby(GROUP, sort=True, dropna=False):
        good = ok.loc[ok.index.intersection(g.index)]
        row = dict(zip(GROUP, key, strict=False))
        row["primary_name"] = g["primary_name"].dropna().iloc[0] if g["primary_name"].notna().any() else None
        row["n"] = len(good)
        row["failed"] = int((g["status"] != "ok").sum())
        row["seeds"] = ",".join(str(s) for s in sorted(good["seed"].dropna().astype(int)))
        # seed, recorded primary, record file: what the significance tests of a table start from.
        row["runs"] = tuple(
            sorted((int(r["seed"]), float(r["primary"]), r["record"]) for _, r in good.iterrows() if r["record"])
        )
        row["settings"] = g["settings"].iloc[0]
        row["implementation"] = g["implementation"].iloc[0]
        row["method_note"] = g["method_note"].iloc[0]
        kinds = sorted({k for k in good.get("peak_memory_kind", pd.Series(dtype=object)).dropna() if k})
        row["peak_memory_kind"] = ",".join(kinds)
        row["budget_requested"] = (
            g["budget_requested"].dropna().iloc[0] if g["budget_requested"].notna().any() else None
        )
        for c in metric_cols:
            if c not in good:
                continue
            vals = good[c].dropna()
            if vals.empty:
                continue
            row[f"{c}.mean"] = float(vals.mean())
            row[f"{c}.std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            row[f"{c}.ci95"] = ci95(vals)
        for c in cost_cols:
            if c in good and good[c].notna().any():
                row[c] = float(good[c].dropna().mean())
        out.append(row)
    return pd.DataFrame(out)
