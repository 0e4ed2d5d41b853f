"""The gate's allowed drop, and the check that every suite row learned (a row at chance has no teeth).

Two noise estimates, the tighter one used:

- seed term: with s the baseline's sample standard deviation over its n_b seeds and n_now seeds run now, the
  standard error of the difference of the two means is s * sqrt(1/n_b + 1/n_now);
- paired term: the baseline stores every seed's per-example predictions, so the drop can be measured example by
  example: a paired bootstrap over the evaluation examples of (mean over seeds of now's metric) minus (the
  baseline's), seed s paired with seed s (`stats.paired_bootstrap`); its standard error is read off the 95%
  interval (width / 3.92). Both models erring on the same hard examples cancels, which is why this is usually
  the tighter one.

    allowed = min(CAP, max(FLOOR, K_SIGMA * min(seed SE, paired SE)))    K_SIGMA = 3, FLOOR = 0.01, CAP = 0.03

in the task's primary metric (SST-2 accuracy, QQP mean of accuracy and F1: 0.03 = three points). Three
standard errors keep false alarms from a benign change (another summation order, a library upgrade: a change
about as large as a new seed) rare; the floor stops a spread estimated from three seeds from being near zero by
chance; the cap is the promise that a 3-point loss never passes, whatever the spread. A term that cannot be
computed (one baseline seed; no stored predictions; other evaluation rows) is left out; with neither, the cap
applies.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

K_SIGMA = 3.0
FLOOR = 0.01
CAP = 0.03
LEARNED_ALPHA = 0.01
RESAMPLES = 1000
RULE_TEXT = (
    f"allowed drop = min({CAP:g}, max({FLOOR:g}, {K_SIGMA:g} x min(seed SE, paired SE))) in the primary metric; "
    f"seed SE = baseline seed std x sqrt(1/n_base + 1/n_now), paired SE from a paired bootstrap over evaluation "
    f"examples of the seed-averaged metric against the baseline's stored predictions; a row regresses when its "
    f"mean falls by more than that"
)


@dataclass(frozen=True)
class Allowance:
    value: float
    seed_se: float | None
    paired_se: float | None
    bound: str  # which term set the value: "seed", "paired", "floor" or "cap"


def std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    m = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def allowance(baseline_values: Sequence[float], n_now: int, paired_se: float | None = None) -> Allowance:
    n_b = len(baseline_values)
    seed_se = std(baseline_values) * math.sqrt(1 / n_b + 1 / n_now) if n_b >= 2 and n_now >= 1 else None
    terms = {k: v for k, v in (("seed", seed_se), ("paired", paired_se)) if v is not None and math.isfinite(v)}
    if not terms:
        return Allowance(CAP, seed_se, paired_se, "cap")
    bound, se = min(terms.items(), key=lambda kv: kv[1])
    raw = K_SIGMA * se
    if raw < FLOOR:
        return Allowance(FLOOR, seed_se, paired_se, "floor")
    if raw > CAP:
        return Allowance(CAP, seed_se, paired_se, "cap")
    return Allowance(raw, seed_se, paired_se, bound)


def references_digest(references: Sequence) -> str:
    return hashlib.sha256(json.dumps(list(references)).encode()).hexdigest()[:16]


def paired_se(
    task, base: Mapping[int, Sequence], now: Mapping[int, Sequence], references: Sequence
) -> float | None:
    """Standard error of (now - baseline) in the seed-averaged primary metric, over evaluation examples; None
    when the two share no seed with predictions on these references."""
    from peftbench.harness.report.stats import paired_bootstrap

    seeds = sorted(s for s in set(base) & set(now) if len(base[s]) == len(now[s]) == len(references))
    if not seeds:
        return None
    pairs = [(list(base[s]), list(now[s]), list(references)) for s in seeds]
    _, (lo, hi), _, _, _ = paired_bootstrap(task, pairs, RESAMPLES, seed=0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return (hi - lo) / 3.92


def learned_p(task, name: str, scores: Mapping[int, float], predictions: Mapping[int, Sequence], references,
              data: str, train_rows: int) -> tuple[float | None, str, dict[int, float]]:  # fmt: skip
    """One-sided p that the row beats the task's trivial baseline (the leaderboard's "learned?" test), the
    baseline's name, and the same test's p for each seed alone (a row can pass pooled while two of its three
    seeds sit at the majority class); p is None when it cannot be tested."""
    from peftbench.harness.report.baselines import trivial_baseline
    from peftbench.harness.report.evidence import run_training_labels
    from peftbench.harness.report.significance import MethodRuns, learned_test

    refs = list(references)
    baseline = trivial_baseline(task, run_training_labels(task, data, train_rows), refs)

    def p_of(seeds) -> float | None:
        runs = MethodRuns(name, {s: scores[s] for s in seeds if s in scores}, {s: predictions[s] for s in seeds})
        return learned_test(task, runs, refs, baseline, alpha=LEARNED_ALPHA).p

    per_seed = {s: p for s in sorted(predictions) if (p := p_of([s])) is not None}
    return p_of(list(predictions)), baseline.name, per_seed
