"""What a leaderboard table may claim: which cells learned anything, which methods tie for best, and how small
a difference the table could have seen at all.

Pure functions over plain inputs: per method, the recorded primary metric per seed and (optionally) the
per-example predictions per seed on the primary evaluation split, all aligned with one list of references (the
ones stored in `<hash>.preds.jsonl`). Scores are on the task's own scale (GLUE fractions, SQuAD 0-100).

Three questions, three tests (the legends below are what a table prints):

1. Learned? (`learned_test`) A cell is flagged when the method is not significantly better than the trivial
   baseline (baselines.py), one-sided, at level alpha, on the evaluation examples, pooled over seeds.
   - accuracy: per example, the method's correctness averaged over seeds minus the baseline's correctness; a
     one-sided paired t-test over examples. Averaging over seeds first keeps the example as the independent
     unit (a model's seeds err on the same hard examples, so counting seed x example pairs as independent
     would overstate n); the per-example differences are bounded in [-1, 1], so with hundreds of examples the
     t-statistic is close to normal and, unlike a sign test, it uses the partial agreement between seeds.
   - a regression task (STS-B): correlations are undefined for the constant training-mean baseline, so the test
     is on per-example squared error instead (same scheme, method's error averaged over seeds).
   - every other metric (F1, MCC, combined, SQuAD F1): a paired bootstrap of the metric difference over
     examples, pooled over seeds (`stats.paired_bootstrap`); the one-sided p is half its two-sided p when the
     observed difference favours the method, else one minus that half (the bootstrap distribution of a
     difference of smooth statistics is close to symmetric at these sizes).
2. Ties, not winners (`top_group`) The best mean and every method not significantly worse than it. The
   comparison with the best is two-sided: the best was picked after looking at the data, so its direction was
   not fixed in advance. With >= `min_seeds` shared seeds, both noise sources are tested: a paired t-test over
   seeds (training randomness) and a paired bootstrap over examples (test-set sampling); a method is separated
   only when both reject (an intersection-union test, so p = the larger of the two and no extra correction).
   With fewer seeds only the bootstrap is used. The p's of the methods compared with the best are Holm
   corrected. When the group is every method, the table marks nothing.
3. Minimum detectable difference (`min_detectable_difference`, `table_mdd`), for 1 - beta power at level alpha:
       seed term    = (t_{1-alpha/2, n-1} + t_{1-beta, n-1}) * sqrt(2 * s2_seed / n)
       example term = (z_{1-alpha/2} + z_{1-beta}) * sqrt(2 * s2_ex)
       MDD = the larger of the two terms that apply
   with s2_seed the pooled between-seed variance of a method's score, n the seeds, and s2_ex the sampling
   variance of one method's score over the N evaluation examples (p(1-p)/N for accuracy; a bootstrap variance in
   general). Seeds do not shrink s2_ex: every seed is scored on the same examples. The larger term governs
   because a method is separated only when both tests reject. Both terms ignore the pairing (two methods tend to
   miss the same examples, which shrinks the variance of their difference), so the MDD is conservative: the
   paired tests often separate somewhat smaller gaps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from peftbench.harness.report.baselines import MSE, Baseline
from peftbench.harness.report.stats import make_scorer, paired_bootstrap, paired_t

log = logging.getLogger(__name__)

ALPHA = 0.05
# The leaderboard's "learned?" test is stricter than its tie test: calling a row learned is a claim about the
# benchmark's recipe, and a table holds dozens of such rows.
LEARNED_ALPHA = 0.01
MIN_SEEDS = 3

LEARNED_LEGEND = {
    "correctness": "not learned: not better than the trivial baseline (one-sided paired t-test over evaluation "
    "examples of per-example correctness averaged over seeds, α = {alpha})",
    "squared_error": "not learned: squared error not lower than the training mean's (one-sided paired t-test over "
    "evaluation examples, errors averaged over seeds, α = {alpha})",
    "bootstrap": "not learned: not better than the trivial baseline (one-sided paired bootstrap of the {metric} "
    "difference over evaluation examples, pooled over seeds, α = {alpha})",
    "untested": "not tested against a trivial baseline: {reason}",
}
TOP_GROUP_LEGEND = (
    "bold: best mean and every method not significantly worse than it (two-sided; with {min_seeds}+ seeds a paired "
    "t-test over seeds and a paired bootstrap over examples must both reject, else the bootstrap alone; "
    "{correction}, α = {alpha})"
)
NO_MARK_LEGEND = "no method marked: none is significantly worse than the best mean ({correction}, α = {alpha})"
MDD_LEGEND = (
    "minimum detectable difference at {n} seed(s) and {examples} examples: {value} (a true gap this large is "
    "separated with {power:.0%} power at α = {alpha}; smaller gaps often show as ties)"
)


@dataclass(frozen=True)
class MethodRuns:
    """One table row's runs. `scores`: seed -> recorded primary metric. `predictions`: seed -> per-example
    predictions on the primary evaluation split, aligned with the table's references (may be empty)."""

    name: str
    scores: Mapping[int, float]
    predictions: Mapping[int, Sequence] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else math.nan


@dataclass(frozen=True)
class LearnedTest:
    method: str
    test: str  # "correctness" | "squared_error" | "bootstrap" | "untested"
    metric: str  # what was compared: the primary metric, or "mse"
    margin: float  # method - baseline on `metric` (for mse, negative is better)
    p: float  # one-sided
    alpha: float
    not_learned: bool | None  # None: could not be tested
    seeds: tuple[int, ...]
    legend: str
    note: str = ""


@dataclass(frozen=True)
class PairTest:
    """The best method against one other, on their shared seeds. `diff` = best - other in the better direction."""

    method: str
    seeds: tuple[int, ...]
    diff: float
    p_seeds: float | None
    p_examples: float | None
    p: float  # max of the two that apply (intersection-union); nan when neither could be run
    p_holm: float
    separated: bool
    note: str = ""


@dataclass(frozen=True)
class TopGroup:
    best: str
    members: tuple[str, ...]  # in the order the methods were given, the best included
    tests: tuple[PairTest, ...]
    excluded: tuple[str, ...]  # methods without any score
    alpha: float
    correction: str
    no_mark: bool  # the group is every ranked method: bold nothing
    legend: str

    def in_group(self, name: str) -> bool:
        return name in self.members


@dataclass(frozen=True)
class DetectableDifference:
    value: float  # inf when nothing could test a difference
    seed_term: float | None
    example_term: float | None
    n_seeds: int
    n_examples: int
    seed_variance: float | None
    example_variance: float | None
    alpha: float
    power: float

    def legend(self, scale: float = 1.0, unit: str = "") -> str:
        value = "none detectable" if math.isinf(self.value) else f"{self.value * scale:.2f}{unit}"
        return MDD_LEGEND.format(
            n=self.n_seeds, examples=self.n_examples, value=value, power=self.power, alpha=self.alpha
        )


# --- 1. learned? -------------------------------------------------------------------------------------------------


def learned_test(
    task,
    runs: MethodRuns,
    references: Sequence,
    baseline: Baseline,
    alpha: float = ALPHA,
    resamples: int = 2000,
    seed: int = 0,
) -> LearnedTest:
    """Is `runs` significantly better than `baseline` on the evaluation examples? See the module docstring."""
    seeds = tuple(sorted(s for s, p in runs.predictions.items() if len(p) == len(references)))
    if not baseline.available:
        return _untested(runs, task, alpha, baseline.note or f"{baseline.name} has no predictions")
    if not seeds:
        return _untested(runs, task, alpha, "no per-example predictions aligned with the references")
    if len(baseline.predictions) != len(references):
        raise ValueError(f"baseline has {len(baseline.predictions)} predictions for {len(references)} references")
    sign = 1.0 if task.higher_is_better else -1.0
    base = baseline.predictions
    if task.head == "regression":
        y = np.asarray(references, dtype=float)
        err = np.mean([(np.asarray(runs.predictions[s], dtype=float) - y) ** 2 for s in seeds], axis=0)
        base_err = (np.asarray(base, dtype=float) - y) ** 2
        gain = base_err - err  # > 0: the method errs less
        # Averaging equal errors over seeds leaves ~1e-16 residues; left in, a copy of the baseline could get
        # any p from rounding alone.
        gain[np.abs(gain) <= 1e-12 * np.maximum(1.0, base_err)] = 0.0
        st = paired_t(gain.tolist())
        return _learned(runs, "squared_error", MSE, -st.mean, _one_sided(st.p, st.mean), alpha, seeds)
    if task.head == "classification" and task.primary_metric == "accuracy":
        y = np.asarray(references)
        correct = np.mean([np.asarray(runs.predictions[s]) == y for s in seeds], axis=0)
        d = sign * (correct - (np.asarray(base) == y))
        st = paired_t(d.tolist())
        return _learned(runs, "correctness", "accuracy", sign * st.mean, _one_sided(st.p, st.mean), alpha, seeds)
    pairs = [(list(base), list(runs.predictions[s]), list(references)) for s in seeds]
    diff, _, p_two, _, dropped = paired_bootstrap(task, pairs, resamples, seed)
    note = f"{dropped} of {resamples} replicates undefined, dropped" if dropped else ""
    p = max(_one_sided(p_two, sign * diff), 1.0 / (resamples + 1))  # not below what R replicates can resolve
    return _learned(runs, "bootstrap", task.primary_metric, diff, p, alpha, seeds, note)


def _one_sided(p_two: float, towards: float) -> float:
    """One-sided p for 'better' from a symmetric two-sided p and the observed difference's sign."""
    if math.isnan(p_two):
        return math.nan
    return p_two / 2 if towards > 0 else 1.0 - p_two / 2


def _learned(runs, test, metric, margin, p, alpha, seeds, note="") -> LearnedTest:
    flag = None if math.isnan(p) else not p < alpha
    legend = LEARNED_LEGEND[test].format(alpha=alpha, metric=metric)
    return LearnedTest(runs.name, test, metric, float(margin), float(p), alpha, flag, seeds, legend, note)


def _untested(runs, task, alpha, reason) -> LearnedTest:
    legend = LEARNED_LEGEND["untested"].format(reason=reason)
    return LearnedTest(runs.name, "untested", task.primary_metric, math.nan, math.nan, alpha, None, (), legend, reason)


# --- 2. ties, not winners ----------------------------------------------------------------------------------------


def holm_adjusted(pvalues: Sequence[float]) -> tuple[float, ...]:
    """Holm step-down adjusted p-values; NaN (untested) stays NaN and does not count in the family size."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: pvalues[k])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return tuple(out)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[bool, ...]:
    """Which hypotheses Holm's procedure rejects at family-wise level alpha."""
    return tuple(not math.isnan(p) and p <= alpha for p in holm_adjusted(pvalues))


def top_group(
    task,
    runs: Sequence[MethodRuns],
    references: Sequence | None = None,
    alpha: float = ALPHA,
    correction: str = "holm",
    min_seeds: int = MIN_SEEDS,
    resamples: int = 1000,
    seed: int = 0,
) -> TopGroup:
    """The best mean and every method not significantly worse than it (module docstring, point 2).
    `correction` is "holm" or "none" (the latter only to show what the correction changes)."""
    if correction not in ("holm", "none"):
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique within a table: {names}")
    ranked = [r for r in runs if r.scores]
    excluded = tuple(r.name for r in runs if not r.scores)
    if not ranked:
        raise ValueError("no method has a score")
    sign = 1.0 if task.higher_is_better else -1.0
    best = max(ranked, key=lambda r: sign * r.mean)
    tests = [_versus_best(task, best, r, references, min_seeds, resamples, seed) for r in ranked if r is not best]
    raw = [t.p for t in tests]
    adjusted = holm_adjusted(raw) if correction == "holm" else tuple(raw)
    tests = [
        PairTest(t.method, t.seeds, t.diff, t.p_seeds, t.p_examples, t.p, q, not math.isnan(q) and q <= alpha, t.note)
        for t, q in zip(tests, adjusted, strict=True)
    ]
    separated = {t.method for t in tests if t.separated}
    members = tuple(r.name for r in ranked if r.name not in separated)
    no_mark = len(members) == len(ranked)
    m = sum(1 for p in raw if not math.isnan(p))
    template = NO_MARK_LEGEND if no_mark else TOP_GROUP_LEGEND
    how = f"Holm over {m} comparison(s)" if correction == "holm" else "no multiplicity correction"
    legend = template.format(alpha=alpha, correction=how, min_seeds=min_seeds)
    return TopGroup(best.name, members, tuple(tests), excluded, alpha, correction, no_mark, legend)


def _versus_best(task, best: MethodRuns, other: MethodRuns, references, min_seeds, resamples, seed) -> PairTest:
    sign = 1.0 if task.higher_is_better else -1.0
    seeds = tuple(sorted(set(best.scores) & set(other.scores)))
    if not seeds:
        return PairTest(other.name, (), math.nan, None, None, math.nan, math.nan, False, "no seed shared with best")
    diffs = [sign * (best.scores[s] - other.scores[s]) for s in seeds]
    p_seeds = paired_t(diffs).p if len(seeds) >= min_seeds else None
    p_examples = None
    n = None if references is None else len(references)
    both = [s for s in seeds if n and len(best.predictions.get(s, ())) == n and len(other.predictions.get(s, ())) == n]
    if both:
        pairs = [(list(other.predictions[s]), list(best.predictions[s]), list(references)) for s in both]
        p_examples = paired_bootstrap(task, pairs, resamples, seed)[2]
    ps = [p for p in (p_seeds, p_examples) if p is not None and not math.isnan(p)]
    note = ""
    if not ps:
        note = f"untestable: {len(seeds)} shared seed(s) (< {min_seeds}) and no aligned predictions"
    elif p_examples is None:
        note = "seed test only (no aligned predictions)"
    p = max(ps) if ps else math.nan
    return PairTest(other.name, seeds, float(np.mean(diffs)), p_seeds, p_examples, p, math.nan, False, note)


# --- 3. minimum detectable difference ----------------------------------------------------------------------------


def min_detectable_difference(
    seed_variance: float | None,
    n_seeds: int,
    example_variance: float | None,
    n_examples: int = 0,
    alpha: float = ALPHA,
    power: float = 0.8,
    min_seeds: int = MIN_SEEDS,
) -> DetectableDifference:
    """The formula of the module docstring, point 3. A term applies when its test runs: the seed term needs
    `min_seeds` seeds and a variance, the example term an example variance."""
    from scipy import stats

    seed_term = example_term = None
    if seed_variance is not None and n_seeds >= max(2, min_seeds):
        df = n_seeds - 1
        k = float(stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))
        seed_term = k * math.sqrt(2 * seed_variance / n_seeds)
    if example_variance is not None:
        example_term = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(2 * example_variance)
    terms = [t for t in (seed_term, example_term) if t is not None]
    value = max(terms) if terms else math.inf
    return DetectableDifference(
        value, seed_term, example_term, n_seeds, n_examples, seed_variance, example_variance, alpha, power
    )


def pooled_seed_variance(runs: Sequence[MethodRuns]) -> float | None:
    """Between-seed variance pooled over methods (each weighted by its degrees of freedom)."""
    ss = dof = 0.0
    for r in runs:
        v = np.asarray(list(r.scores.values()), dtype=float)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return ss / dof if dof else None


def score_variance(task, predictions: Sequence, references: Sequence, resamples: int = 1000, seed: int = 0) -> float:
    """Bootstrap variance of the task's primary metric over the evaluation examples (p(1-p)/N for accuracy)."""
    scorer, _ = make_scorer(task, list(predictions), list(references))
    n = len(references)
    values = scorer(np.random.default_rng(seed).integers(0, n, size=(resamples, n)))
    values = values[~np.isnan(values)]
    return float(values.var(ddof=1)) if values.size > 1 else math.nan


def table_mdd(
    task,
    runs: Sequence[MethodRuns],
    references: Sequence | None = None,
    alpha: float = ALPHA,
    power: float = 0.8,
    min_seeds: int = MIN_SEEDS,
    resamples: int = 1000,
    seed: int = 0,
) -> DetectableDifference:
    """The table's minimum detectable difference: the seed variance pooled over its methods at the smallest seed
    count among them, and the example variance averaged over methods (each on its first seed's predictions)."""
    scored = [r for r in runs if r.scores]
    n_seeds = min((len(r.scores) for r in scored), default=0)
    n = len(references) if references is not None else 0
    variances = []
    for r in scored:
        first = next((s for s in sorted(r.predictions) if n and len(r.predictions[s]) == n), None)
        if first is not None:
            variances.append(score_variance(task, r.predictions[first], references, resamples, seed))
    variances = [v for v in variances if not math.isnan(v)]
    example_variance = float(np.mean(variances)) if variances else None
    return min_detectable_difference(
        pooled_seed_variance(scored), n_seeds, example_variance, n, alpha, power, min_seeds
    )


def versus(
    task,
    best: MethodRuns,
    other: MethodRuns,
    references: Sequence | None = None,
    min_seeds: int = MIN_SEEDS,
    resamples: int = 1000,
    seed: int = 0,
) -> PairTest:
    """`other` against a chosen `best` exactly as `top_group` compares them (two-sided; both noise sources with
    enough seeds), before any multiplicity correction: for summaries that pick their best row elsewhere."""
    return _versus_best(task, best, other, references, min_seeds, resamples, seed)
