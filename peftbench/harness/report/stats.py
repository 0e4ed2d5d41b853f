"""Paired statistics for `peftbench compare`: a t-test over seeds and a paired bootstrap over evaluation
examples, with numpy scorers for the common primary metrics (checked against the task's own metric)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Resampled indices held in memory at once (rows x examples), so SQuAD-sized splits stay within ~100 MB.
_CHUNK_CELLS = 4_000_000
_TOL = 1e-9

Scorer = Callable[[np.ndarray], np.ndarray]  # (replicates, examples) indices -> metric per replicate


@dataclass(frozen=True)
class SeedTest:
    n: int
    diffs: tuple[float, ...]
    mean: float
    std: float
    ci: tuple[float, float]
    t: float
    p: float


# --- statistics ----------------------------------------------------------------------------------------------------


def paired_t(diffs: list[float]) -> SeedTest:
    """Mean of the per-seed differences, its 95% t-interval and the two-sided p of a paired t-test."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return SeedTest(n, tuple(diffs), mean, math.nan, (math.nan, math.nan), math.nan, math.nan)
    std = float(d.std(ddof=1))
    if std == 0.0:
        # Every seed gave the same difference: the interval collapses and t is 0 or infinite.
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return SeedTest(n, tuple(diffs), mean, 0.0, (mean, mean), t, 1.0 if mean == 0.0 else 0.0)
    se = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    return SeedTest(n, tuple(diffs), mean, std, (mean - half, mean + half), t, p)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=1)  # average ranks for ties, as spearmanr


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xm = x - x.mean(axis=1, keepdims=True)
    ym = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xm * ym).sum(axis=1) / np.sqrt((xm * xm).sum(axis=1) * (ym * ym).sum(axis=1))


def _binary_counts(preds: np.ndarray, refs: np.ndarray) -> Scorer:
    cell = 2 * refs.astype(np.int64) + preds.astype(np.int64)  # 0 tn, 1 fp, 2 fn, 3 tp

    def counts(idx: np.ndarray) -> tuple[np.ndarray, ...]:
        c = cell[idx]
        return tuple((c == k).sum(axis=1).astype(float) for k in range(4))

    return counts


def _fast_scorer(task, preds: list, refs: list) -> Scorer | None:
    """A numpy version of the task's primary metric over many index rows, or None when there is none."""
    name = task.primary_metric
    if task.head == "span":
        if name not in ("f1", "exact", "exact_match"):
            return None
        # SQuAD's EM and F1 are means of per-example scores, so a subset's score is the mean of its examples'.
        per = np.array([task.metric_on([p], [r]) for p, r in zip(preds, refs, strict=True)], dtype=float)
        return lambda idx: per[idx].mean(axis=1)
    if task.head == "regression":
        p, y = np.asarray(preds, dtype=float), np.asarray(refs, dtype=float)
        if name == "pearson":
            return lambda idx: _pearson_rows(p[idx], y[idx])
        if name == "spearmanr":
            return lambda idx: _pearson_rows(_rank_rows(p[idx]), _rank_rows(y[idx]))
        if name == "combined":
            return lambda idx: (
                (_pearson_rows(p[idx], y[idx]) + _pearson_rows(_rank_rows(p[idx]), _rank_rows(y[idx]))) / 2
            )
        return None
    p, y = np.asarray(preds), np.asarray(refs)
    if name == "accuracy":
        correct = (p == y).astype(float)
        return lambda idx: correct[idx].mean(axis=1)
    if name not in ("f1", "combined", "matthews_correlation") or not (
        np.isin(p, (0, 1)).all() and np.isin(y, (0, 1)).all()
    ):
        return None
    counts = _binary_counts(p, y)

    def binary(idx: np.ndarray) -> np.ndarray:
        tn, fp, fn, tp = counts(idx)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)  # sklearn: zero_division=0
            denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            mcc = np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)  # sklearn returns 0 when undefined
        if name == "f1":
            return f1
        if name == "combined":
            return ((tp + tn) / idx.shape[1] + f1) / 2
        return mcc

    return binary


def _slow_scorer(task, preds: list, refs: list) -> Scorer:
    def score(idx: np.ndarray) -> np.ndarray:
        return np.array([task.metric_on([preds[i] for i in row], [refs[i] for i in row]) for row in idx])

    return score


def _agree(x: float, y: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= _TOL * max(1.0, abs(y))


def make_scorer(task, preds: list, refs: list) -> tuple[Scorer, bool]:
    """(scorer, vectorised). The numpy path is used only where it matches `metric_on` on the full set and on two
    fixed resamples, so a metric module that changes its formula falls back to the slow path, not to wrong p's."""
    slow = _slow_scorer(task, preds, refs)
    fast = _fast_scorer(task, preds, refs)
    if fast is None:
        return slow, False
    n = len(refs)
    probe = np.vstack([np.arange(n), np.random.default_rng(12345).integers(0, n, size=(2, n))])
    got, want = fast(probe), slow(probe)
    if all(_agree(float(g), float(w)) for g, w in zip(got, want, strict=True)):
        return fast, True
    log.warning("%s: vectorised %s disagrees with metric_on (%s vs %s); using metric_on", task.name,
                task.primary_metric, got.tolist(), want.tolist())  # fmt: skip
    return slow, False


def paired_bootstrap(
    task, pairs: list[tuple[list, list, list]], resamples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float], float, bool, int]:
    """Paired bootstrap of B - A over evaluation examples, pooled over seeds as in the module docstring.
    `pairs` holds (predictions A, predictions B, references) per seed. Returns the observed difference, the 95%
    percentile interval, the two-sided p, whether every scorer was vectorised and the replicates dropped (NaN)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    observed = []
    vectorised = True
    for preds_a, preds_b, refs in pairs:
        n = len(refs)
        score_a, fast_a = make_scorer(task, preds_a, refs)
        score_b, fast_b = make_scorer(task, preds_b, refs)
        vectorised = vectorised and fast_a and fast_b
        full = np.arange(n)[None, :]
        observed.append(float(score_b(full)[0] - score_a(full)[0]))
        chunk = max(1, _CHUNK_CELLS // n)
        for start in range(0, resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
            total[start : start + len(idx)] += score_b(idx) - score_a(idx)
    reps = total / len(pairs)
    valid = reps[~np.isnan(reps)]  # e.g. a correlation on a resample whose predictions are all equal
    diff = float(np.mean(observed))
    if valid.size == 0:
        return diff, (math.nan, math.nan), math.nan, vectorised, resamples
    lo, hi = np.percentile(valid, [2.5, 97.5])
    # Ties count as extreme (the tolerance absorbs float noise), so identical methods get p = 1.
    extreme = int(np.sum(np.abs(valid - diff) >= abs(diff) - _TOL))
    p = (1 + extreme) / (valid.size + 1)
    return diff, (float(lo), float(hi)), float(p), vectorised, resamples - valid.size
