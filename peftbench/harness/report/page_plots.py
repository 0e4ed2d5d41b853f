"""Figures of the report page that `plots.py` does not draw: an adaptive method's schedule (its budget b(t), the
evaluation metric with the pruning steps marked, the orthogonal regulariser) and the training loss against the
reference's. Steps on every x axis are optimizer steps taken (1-based): the records log the 0-based index of each
step in the diagnostics and the loss history, and the count of steps taken in the evaluation history."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a page renderer must not need a display

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from peftbench.harness.report.detectors import DROP  # noqa: E402
from peftbench.records import RunRecord  # noqa: E402

log = logging.getLogger(__name__)


def _curve(points) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(p[0]) + 1, float(p[1])) for p in points or () if len(p) >= 2 and p[1] is not None]
    if not pts:
        return np.array([]), np.array([])
    x, y = zip(*pts, strict=True)
    return np.array(x), np.array(y)


def _mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the steps every seed has (the seeds of one config log the same steps)."""
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))
    means = [np.mean([c[1][np.searchsorted(c[0], s)] for c in curves]) for s in steps]
    return np.array(steps), np.array(means)


def pruning_steps(record: RunRecord) -> list[int]:
    """Steps taken (1-based) after which the retained triplet count changed: the allocations that pruned."""
    x, y = _curve(record.diagnostics.get("retained_triplets_curve"))
    return [int(x[i]) for i in range(1, len(x)) if y[i] != y[i - 1]]


def schedule_marks(record: RunRecord) -> tuple[int | None, int | None]:
    """(end of warm-up t_init, step the ranks are fixed T - t_final), as steps taken."""
    s = record.diagnostics.get("schedule") or {}
    t_init, final = s.get("t_init"), s.get("final_step")
    return (None if t_init is None else int(t_init) + 1), (None if final is None else int(final) + 1)


def _eval_curve(rec: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    name = rec.metrics.primary_name
    pts = [(int(h["step"]), float(h[name])) for h in rec.metrics.history
           if isinstance(h, dict) and "step" in h and isinstance(h.get(name), (int, float))]  # fmt: skip
    if not pts:
        return np.array([]), np.array([])
    x, y = zip(*sorted(pts), strict=True)
    return np.array(x), np.array(y)


def plot_schedule(
    records: Sequence[RunRecord], reference: Sequence[RunRecord], labels: tuple[str, str], scale: float, out: Path
) -> list[Path]:
    """Three panels: b(t) and the retained triplets (first seed) with t_init and T - t_final marked; the primary
    metric over steps, mean over seeds, beside the reference's, with the pruning steps marked; the regulariser."""
    from peftbench.harness.report.plots import _save

    first = records[0]
    d = first.diagnostics
    fig = Figure(figsize=(12.0, 3.4))
    ax_b, ax_m, ax_r = fig.subplots(1, 3)
    t_init, t_final = schedule_marks(first)
    x, y = _curve(d.get("budget_curve"))
    unit = d.get("budget_unit") or "budget"
    ax_b.plot(x, y, color="tab:blue", linewidth=1.5, label=f"b(t), scheduled ({unit})")
    x, y = _curve(d.get("retained_triplets_curve"))
    if len(x):
        ax_b.step(x, y, where="post", color="tab:orange", linewidth=1.2, label="retained triplets")
    for step, name, style in ((t_init, "t_init", "--"), (t_final, "T - t_final", ":")):
        if step is not None:
            ax_b.axvline(step, color="grey", linestyle=style, linewidth=1, label=f"{name} = step {step}")
    ax_b.set_title(f"{labels[0]} budget schedule (seed {first.config.seed})", fontsize=9)
    ax_b.set_xlabel("optimizer steps taken")
    ax_b.legend(fontsize=7)

    colours = itertools.cycle(("tab:blue", "tab:green"))
    for recs, label in ((records, labels[0]), (reference, labels[1])):
        if not recs:
            continue
        sx, sy = _mean_curve([_eval_curve(r) for r in recs])
        if len(sx):
            ax_m.plot(sx, sy * scale, marker="o", markersize=3, color=next(colours), label=f"{label} (n = {len(recs)})")
    for i, step in enumerate(pruning_steps(first)):
        ax_m.axvline(step, color="tab:red", alpha=0.35, linewidth=1, label="pruning step" if i == 0 else None)
    ax_m.set_title(f"{first.metrics.primary_name} during training, mean over seeds", fontsize=9)
    ax_m.set_xlabel("optimizer steps taken")
    ax_m.legend(fontsize=7)

    curves = [_curve(r.diagnostics.get("orth_reg_curve")) for r in records]
    rx, ry = _mean_curve(curves)
    if len(rx):
        ax_r.plot(rx, ry, color="tab:purple", linewidth=1.5, label="R (orthogonality penalty)")
    lx, ly = _mean_curve([_curve([(p[0], p[2]) for p in r.train.loss_history if len(p) >= 3]) for r in records])
    if len(lx):
        ax_r.plot(lx, ly, color="tab:grey", linewidth=1.0, linestyle="--", label="extra loss added (γ R)")
    ax_r.set_title("orthogonal regulariser, mean over seeds", fontsize=9)
    ax_r.set_xlabel("optimizer steps taken")
    ax_r.legend(fontsize=7)
    for ax in (ax_b, ax_m, ax_r):
        ax.grid(True, alpha=0.25)
    fig.tight_layout()
    return _save(fig, out)


def plot_loss(arms: Sequence[tuple[str, Sequence[RunRecord]]], out: Path) -> list[Path]:
    """Training (task) loss over steps per method, mean over seeds, with each method's 90%-of-initial line."""
    from peftbench.harness.report.plots import _save

    fig = Figure(figsize=(7.0, 3.6))
    ax = fig.add_subplot()
    colours = itertools.cycle(matplotlib.colormaps["tab10"].colors)
    for label, recs in arms:
        x, y = _mean_curve([_curve([(p[0], p[1]) for p in r.train.loss_history]) for r in recs if r.ok])
        colour = next(colours)
        if not len(x):
            continue
        ax.plot(x, y, color=colour, linewidth=1.3, label=f"{label} (n = {len(recs)})")
        start = float(np.mean(y[: min(3, len(y))]))
        ax.axhline(DROP * start, color=colour, linestyle=":", linewidth=0.9)
    ax.set_xlabel("optimizer steps taken")
    ax.set_ylabel("training loss (task only)")
    ax.set_title(f"training loss, mean over seeds; dotted: {DROP:.0%} of each method's initial loss", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, out)
