"""Figures for run records and leaderboards. Each function writes a PNG and an SVG and returns their paths."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import matplotlib

# A library module must not need a display: render off-screen whatever backend the user configured.
matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from peftbench.errors import UsageError  # noqa: E402
from peftbench.harness.report.aggregate import count_label, metric_scale  # noqa: E402
from peftbench.records import NO_BUDGET, RunRecord  # noqa: E402

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg")


def _out_paths(out: str | Path) -> list[Path]:
    """`out` names the figure without suffix (a .png/.svg suffix is dropped); parents are created."""
    out = Path(out)
    if out.suffix.lower() in {"." + f for f in FORMATS}:
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    return [out.with_name(f"{out.name}.{fmt}") for fmt in FORMATS]


def _save(fig: Figure, out: str | Path) -> list[Path]:
    paths = _out_paths(out)
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def _short_kind(kind: str) -> str:
    """'attention.self.query' -> 'attention.query', 'intermediate.dense' -> 'intermediate'."""
    parts = [p for p in kind.split(".") if p not in {"self", "dense"}]
    return ".".join(parts) or kind


def plot_ranks(diagnostics: dict, out: str | Path) -> list[Path]:
    """Heatmap of AdaLoRA's final rank per adapted matrix, module kinds x layers as in the paper's figure,
    each cell annotated with its rank; the colour scale runs from 0 to the largest initial rank."""
    grid = diagnostics.get("rank_grid")
    if not grid or not grid.get("layers") or not grid.get("kinds"):
        raise UsageError("plot_ranks needs AdaLoRA diagnostics with a non-empty 'rank_grid' (a finished adalora run)")
    layers, kinds = grid["layers"], grid["kinds"]
    # Rows are module kinds, columns layers; NaN marks a kind not adapted in a layer.
    data = np.array(
        [[math.nan if grid["ranks"][li][ki] is None else grid["ranks"][li][ki] for li in range(len(layers))]
         for ki in range(len(kinds))],
        dtype=float,
    )  # fmt: skip
    init_ranks = diagnostics.get("init_ranks") or {}
    vmax = max(init_ranks.values()) if init_ranks else np.nanmax(data)
    vmax = max(float(vmax), 1.0)

    fig = Figure(figsize=(max(4.0, 0.55 * len(layers) + 2.5), max(2.5, 0.45 * len(kinds) + 1.4)))
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap="YlGnBu", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
    for ki in range(len(kinds)):
        for li in range(len(layers)):
            value = data[ki, li]
            if math.isnan(value):
                continue
            # Dark text on light cells, light text on dark ones, so every number stays readable.
            colour = "white" if value > 0.6 * vmax else "black"
            ax.text(li, ki, f"{int(value)}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(len(layers)), labels=[str(layer) for layer in layers])
    ax.set_yticks(range(len(kinds)), labels=[_short_kind(k) for k in kinds])
    ax.set_xlabel("layer")
    total = diagnostics.get("final_triplets")
    unit_note = f" ({total} triplets kept)" if total is not None else ""
    ax.set_title(f"AdaLoRA final rank per matrix{unit_note}", fontsize=10)
    fig.colorbar(im, ax=ax, label="final rank", ticks=MaxNLocator(integer=True))
    return _save(fig, out)


# --- benchmark figures -------------------------------------------------------------------------------------------


def _metric_scale(task: str) -> tuple[float, str]:
    scale = metric_scale(task)
    return scale, " (%)" if scale == 100.0 else ""


def _is_probe(method: str) -> bool:
    from peftbench import registry

    try:
        return registry.adapters.get(method).is_probe
    except UsageError:
        return False


def _trivial_baseline(rows, task: str) -> tuple[float, str] | None:
    """The task's trivial baseline (value on the primary metric, name), from the runs' own stored references
    and training rows, as the leaderboard computes it; None where it is undefined or cannot be computed."""
    from peftbench import registry
    from peftbench.harness.report.evidence import RowRuns, load_table

    if "runs" not in rows:
        return None
    try:
        spec = registry.tasks.get(task)
    except UsageError:
        return None
    runs = [
        RowRuns(str(i), tuple(r["runs"])) for i, (_, r) in enumerate(rows.iterrows()) if isinstance(r["runs"], tuple)
    ]
    base = load_table(spec, runs).baseline
    value = _finite(base.primary(spec)) if base.available else None
    return None if value is None else (value, base.name)


def _is_reference(method: str, budget: str) -> bool:
    """Unbudgeted runs of an unbudgeted method (full FT) are a reference level, not a point on the x axis."""
    from peftbench import registry

    if budget != NO_BUDGET:
        return False
    try:
        return not registry.adapters.get(method).budgeted
    except UsageError:
        return True  # a method this install does not know: its unbudgeted runs have no budget to plot against


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def plot_pareto(summary_or_frame, task: str, out: str | Path) -> list[Path]:
    """Primary metric against adapter parameters (log x) for one task: one line per budgeted method through
    its budgets, error bars = std over seeds, unbudgeted methods (full FT, the linear probe) as horizontal
    bands, mean ± std, and the trivial baseline as a dashed black line. Budgets label the top axis (not each
    point, where labels of methods at one budget would overlap); the legend sits outside the axes. Accepts
    `aggregate.summarize` output or the per-run frame of `aggregate.runs_frame`."""
    from peftbench.harness.report.aggregate import summarize

    df = summary_or_frame
    summary = df if "primary.mean" in df.columns or df.empty else summarize(df)
    rows = summary[summary["task"] == task] if not summary.empty else summary
    if rows.empty or "primary.mean" not in rows or rows["primary.mean"].notna().sum() == 0:
        raise UsageError(f"no successful runs of task {task!r} to plot; run a sweep first or check --results")
    scale, unit = _metric_scale(task)
    metric = rows["primary_name"].dropna().iloc[0] if rows["primary_name"].notna().any() else "primary"

    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    colours = itertools.cycle(matplotlib.colormaps["tab10"].colors)
    frontier: list[tuple[float, float]] = []
    budget_ticks: dict[str, list[float]] = {}
    n_lines = 0
    for method, g in rows.groupby("method", sort=True):
        colour = next(colours)
        points = []
        for _, r in g.iterrows():
            y = _finite(r.get("primary.mean"))
            if y is None:
                continue
            std = _finite(r.get("primary.std")) or 0.0
            if _is_reference(method, r["budget"]):
                label = f"{method} (mean ± std)"
                params = _finite(r.get("adapter"))
                if _is_probe(method):
                    label = f"{method}: linear probe, the floor (mean ± std)"
                elif params:
                    label = f"{method}, {count_label(params, 2)} params (mean ± std)"
                ax.axhline(y * scale, color=colour, linestyle="--", linewidth=1.2, label=label)
                ax.axhspan((y - std) * scale, (y + std) * scale, color=colour, alpha=0.15, linewidth=0)
                continue
            x = _finite(r.get("adapter"))
            if x is None or x <= 0:
                logger.warning("%s/%s @%s has no adapter parameter count; left out of the plot", task, method,
                               r["budget"])  # fmt: skip
                continue
            points.append((x, y * scale, std * scale, str(r["budget"]), int(r.get("n") or 0)))
        if not points:
            continue
        points.sort()
        xs, ys, errs = (np.array([p[i] for p in points], dtype=float) for i in range(3))
        ax.errorbar(xs, ys, yerr=errs, color=colour, marker="o", markersize=5, capsize=3, linewidth=1.5,
                    label=f"{method} (n = {min(p[4] for p in points)}-{max(p[4] for p in points)} seeds)"
                    if len({p[4] for p in points}) > 1 else f"{method} (n = {points[0][4]} seeds)")  # fmt: skip
        for x, _, _, budget, _ in points:
            budget_ticks.setdefault(budget, []).append(x)
        frontier.extend((x, y) for x, y, *_ in points)
        n_lines += 1
    if not n_lines:
        raise UsageError(f"task {task!r} has no budgeted runs with a parameter count to put on the x axis")
    # The Pareto front: points no other point beats with fewer (or as many) parameters.
    front, best = [], -math.inf
    for x, y in sorted(frontier, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        fx, fy = zip(*front, strict=True)
        ax.step(fx, fy, where="post", color="grey", linewidth=0.8, alpha=0.6, zorder=0, label="Pareto front")
    baseline = _trivial_baseline(rows, task)
    if baseline is not None:
        ax.axhline(baseline[0] * scale, color="black", linestyle="--", linewidth=1.0,
                   label=f"trivial baseline: {baseline[1]}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale)")
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{task}: {metric} vs adapter parameters", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if budget_ticks:
        # One label per budget on the top axis, at the mean count the methods reached for it.
        top = ax.secondary_xaxis("top")
        ticks = sorted((float(np.mean(xs)), b) for b, xs in budget_ticks.items())
        top.set_xticks([x for x, _ in ticks], [b for _, b in ticks], fontsize=7)
        top.minorticks_off()
        top.set_xlabel("budget", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              title="error bars and bands: ± std over seeds", title_fontsize=7)  # fmt: skip
    return _save(fig, out)


def plot_curves(records: list[RunRecord], task: str, out: str | Path, metric: str | None = None) -> list[Path]:
    """Evaluation metric against training step for one task: one line per method (and budget, when a method
    ran at several), the mean over seeds at each step, shaded ± std where more than one seed has that step.
    `records` are RunRecords; failed runs and other tasks are skipped. `metric` defaults to the primary."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        if not rec.ok or rec.config.task != task:
            continue
        groups.setdefault((rec.config.method, rec.budget_spec), []).append(rec)
    if not groups:
        raise UsageError(f"no successful runs of task {task!r} to plot; run a sweep first or check --results")
    if metric is None:
        metric = next(r.metrics.primary_name for g in groups.values() for r in g)
    budgets_of: dict[str, set[str]] = {}
    for method, budget in groups:
        budgets_of.setdefault(method, set()).add(budget)
    scale, unit = _metric_scale(task)

    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    colours = itertools.cycle(matplotlib.colormaps["tab10"].colors)
    drawn = 0
    for (method, budget), recs in sorted(groups.items()):
        per_step: dict[int, list[float]] = {}
        seeds = 0
        for rec in recs:
            points = [(h["step"], _finite(h.get(metric))) for h in rec.metrics.history
                      if isinstance(h, dict) and "step" in h]  # fmt: skip
            points = [(int(s), v) for s, v in points if v is not None]
            seeds += bool(points)
            for step, value in points:
                per_step.setdefault(step, []).append(value)
        colour = next(colours)
        if not per_step:
            continue
        steps = np.array(sorted(per_step))
        vals = [np.array(per_step[s]) for s in steps]
        mean = np.array([v.mean() for v in vals]) * scale
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]) * scale
        label = method if len(budgets_of[method]) == 1 or budget == NO_BUDGET else f"{method} @{budget}"
        ax.plot(steps, mean, color=colour, marker="o", markersize=3, linewidth=1.5, label=f"{label} (n = {seeds})")
        if seeds > 1:
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
        drawn += 1
    if not drawn:
        raise UsageError(f"no run of task {task!r} has {metric!r} in its evaluation history; check the metric name")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{task}: {metric} during training (mean ± std over seeds)", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out)
