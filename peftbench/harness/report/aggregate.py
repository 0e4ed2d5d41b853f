"""Records into pandas: one row per run, then mean, std, n and a 95% t-interval per (task, method, budget)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from peftbench.config import canonical_json
from peftbench.records import iter_records

# Runs are pooled over seeds only when everything but the seed is the same (the variant), so records made
# with another profile, data or --set never mix into one mean.
GROUP = ["task", "method", "budget", "profile", "variant"]
NO_BUDGET = "-"


def _row(data: dict) -> dict:
    cfg = data.get("config", {})
    params = data.get("params") or {}
    perf = data.get("perf") or {}
    metrics = data.get("metrics") or {}
    row = {
        "task": cfg.get("task"),
        "method": cfg.get("method"),
        "budget": (cfg.get("budget") or {}).get("spec") or NO_BUDGET,
        "budget_requested": (cfg.get("budget") or {}).get("requested"),
        "seed": cfg.get("seed"),
        "model": (cfg.get("model") or {}).get("id"),
        "profile": cfg.get("profile") or "-",
        "variant": _variant(cfg),
        "status": data.get("status"),
        "error": data.get("error"),
        "primary_name": metrics.get("primary_name"),
        "primary": metrics.get("primary"),
        "adapter": params.get("adapter"),
        "adapter_peak": params.get("adapter_peak"),
        "trainable": params.get("trainable"),
        "head": params.get("head"),
        "total": params.get("total"),
        "samples_per_s": perf.get("train_samples_per_second"),
        "tokens_per_s": perf.get("train_tokens_per_second"),
        "peak_memory_bytes": perf.get("peak_memory_bytes"),
        "step_ms": perf.get("step_time_ms_median"),
        "train_seconds": perf.get("train_seconds"),
        "config_hash": cfg.get("config_hash"),
    }
    for k, v in (metrics.get("all") or {}).items():
        if isinstance(v, (int, float)):
            row[f"metric.{k}"] = float(v)
    return row


def _variant(cfg: dict) -> str:
    resolved = dict(cfg.get("_resolved") or {})
    resolved.pop("seed", None)
    if not resolved:  # a record without its resolved config: fall back to what it does say
        resolved = {k: v for k, v in cfg.items() if k not in ("seed", "config_hash")}
    return hashlib.sha256(canonical_json(resolved).encode()).hexdigest()[:8]


def runs_frame(results: Path, include_failed: bool = True) -> pd.DataFrame:
    rows = [_row(r.data) for r in iter_records(results) if r.data is not None]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if not include_failed:
        df = df[df["status"] == "ok"]
    return df.reset_index(drop=True)


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
