"""Failure-mode detectors for one method at one budget, each a flag with the numbers that raised it (or that
cleared it). They read records only, so they run the same on a fresh sweep and on committed results.

- slow start: optimizer steps until the training loss first falls below 90% of its initial value, against the
  reference method's; flagged when the method needs more than SLOW_FACTOR times the reference's steps, or never
  gets there in a seed where the reference does;
- rank collapse: a module type pruned to rank 0 in every layer, in any seed;
- budget off target: achieved adapter parameters more than 5% from the requested budget;
- bad seed: a failed (diverged, crashed) record, or a primary metric at or below the trivial baseline's;
- seed spread: std over seeds more than SPREAD_FACTOR times the reference's.

`fired` is None when a detector could not look (too few seeds, no loss history, no baseline).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from peftbench.harness.report.ranks import collapsed_kinds
from peftbench.records import RunRecord

log = logging.getLogger(__name__)

DROP = 0.9
WINDOW = 3  # log points averaged, so one easy batch does not count as the loss having fallen
SLOW_FACTOR = 1.5
SPREAD_FACTOR = 1.5
BUDGET_TOLERANCE = 0.05

SLOW_START = "slow start"
RANK_COLLAPSE = "rank collapse"
BUDGET_OFF = "budget off target"
BAD_SEED = "diverged or collapsed seed"
SEED_SPREAD = "seed spread"


@dataclass(frozen=True)
class Flag:
    detector: str
    method: str
    fired: bool | None
    evidence: str


def steps_to_drop(loss_history: Sequence[Sequence[float]], drop: float = DROP, window: int = WINDOW) -> int | None:
    """Optimizer steps taken until the trailing mean of `window` logged task losses first falls below `drop` x
    the mean of the first `window` (steps counted 1-based: the record logs the 0-based index of each step)."""
    points = [(int(p[0]), float(p[1])) for p in loss_history if len(p) >= 2 and math.isfinite(float(p[1]))]
    if len(points) < window + 1:
        return None
    losses = np.array([v for _, v in points])
    start = float(losses[:window].mean())
    if start <= 0:
        return None
    trailing = np.convolve(losses, np.ones(window) / window, mode="valid")  # trailing[i] ends at point i + window - 1
    below = np.nonzero(trailing[1:] < drop * start)[0]
    return points[int(below[0]) + window][0] + 1 if below.size else None


def _median(values: list[int]) -> float:
    return float(np.median(values)) if values else math.nan


def slow_start(method: str, records: Sequence[RunRecord], reference: Sequence[RunRecord], ref_name: str) -> Flag:
    mine = {r.config.seed: steps_to_drop(r.train.loss_history) for r in records if r.ok}
    theirs = {r.config.seed: steps_to_drop(r.train.loss_history) for r in reference if r.ok}
    if not mine or not theirs:
        return Flag(SLOW_START, method, None, f"no loss history of {method} and {ref_name} to compare")
    reached_m = [v for v in mine.values() if v is not None]
    reached_r = [v for v in theirs.values() if v is not None]
    target = f"{DROP:.0%} of its initial value"
    if not reached_r:
        if reached_m:
            return Flag(SLOW_START, method, False, f"{ref_name}'s loss never fell below {target}; {method}'s did "
                        f"(median step {_median(reached_m):.0f})")  # fmt: skip
        return Flag(SLOW_START, method, None, f"neither {method}'s nor {ref_name}'s training loss fell below {target}")
    never = sorted(s for s, v in mine.items() if v is None and theirs.get(s) is not None)
    m_med, r_med = _median(reached_m), _median(reached_r)
    detail = (
        f"steps until the training loss fell below {target}: {method} median "
        f"{'never' if not reached_m else f'{m_med:.0f}'} ({_per_seed(mine)}), {ref_name} median {r_med:.0f} "
        f"({_per_seed(theirs)})"
    )
    if never:
        return Flag(SLOW_START, method, True, f"{detail}; never reached in seed(s) {', '.join(map(str, never))}")
    fired = bool(reached_m) and m_med > SLOW_FACTOR * r_med
    return Flag(SLOW_START, method, fired, detail + (f", more than {SLOW_FACTOR:g}x" if fired else ""))


def _per_seed(values: dict[int, int | None]) -> str:
    return ", ".join(f"seed {s}: {'never' if v is None else v}" for s, v in sorted(values.items()))


def rank_collapse(method: str, records: Sequence[RunRecord]) -> Flag:
    with_ranks = [r for r in records if r.ok and r.diagnostics.get("rank_grid")]
    if not with_ranks:
        return Flag(RANK_COLLAPSE, method, None, "no final rank grid in the records")
    hits = {r.config.seed: collapsed_kinds(r) for r in with_ranks}
    hits = {s: k for s, k in hits.items() if k}
    if not hits:
        return Flag(RANK_COLLAPSE, method, False, f"every module type kept some rank in all {len(with_ranks)} seed(s)")
    text = "; ".join(f"seed {s}: {', '.join(k)} at rank 0 in every layer" for s, k in sorted(hits.items()))
    return Flag(RANK_COLLAPSE, method, True, text)


def budget_off(method: str, records: Sequence[RunRecord], tolerance: float = BUDGET_TOLERANCE) -> Flag:
    pairs = [(r.config.seed, r.params.adapter, r.config.budget_requested) for r in records
             if r.ok and r.params is not None and r.config.budget_requested]  # fmt: skip
    if not pairs:
        return Flag(BUDGET_OFF, method, None, "no requested budget to compare with")
    off = [(s, got, want, (got - want) / want) for s, got, want in pairs]
    worst = max(off, key=lambda o: abs(o[3]))
    text = f"achieved {worst[1]:,} adapter parameters for {worst[2]:,} requested ({worst[3]:+.1%}"
    text += f", seed {worst[0]}, the furthest of {len(off)})" if len(off) > 1 else ")"
    return Flag(BUDGET_OFF, method, abs(worst[3]) > tolerance, text)


def bad_seeds(
    method: str, records: Sequence[RunRecord], failed: Sequence[RunRecord], trivial: float | None, higher: bool = True
) -> Flag:
    problems = [f"seed {r.config.seed} failed: {r.error or 'no error recorded'}" for r in failed]
    if trivial is not None:
        for r in records:
            v = r.metrics.primary
            if v is not None and (v <= trivial if higher else v >= trivial):
                problems.append(
                    f"seed {r.config.seed}: {r.metrics.primary_name} {v:.4g} at or {'below' if higher else 'above'} "
                    f"the trivial baseline's {trivial:.4g}"
                )
    if problems:
        return Flag(BAD_SEED, method, True, "; ".join(problems))
    if trivial is None:
        return Flag(
            BAD_SEED, method, None, f"no seed failed ({len(records)} ok); no trivial baseline to test collapse against"
        )
    return Flag(
        BAD_SEED, method, False, f"all {len(records)} seed(s) finished above the trivial baseline ({trivial:.4g})"
    )


def _std(records: Sequence[RunRecord]) -> float | None:
    vals = [r.metrics.primary for r in records if r.ok and r.metrics.primary is not None]
    return float(np.std(vals, ddof=1)) if len(vals) >= 2 else None


def seed_spread(method: str, records: Sequence[RunRecord], reference: Sequence[RunRecord], ref_name: str) -> Flag:
    mine, theirs = _std(records), _std(reference)
    if mine is None or theirs is None:
        return Flag(SEED_SPREAD, method, None, f"needs 2+ ok seeds of {method} and of {ref_name}")
    fired = mine > SPREAD_FACTOR * theirs and mine > 0
    ratio = f" ({mine / theirs:.1f}x)" if theirs > 0 else ""
    return Flag(SEED_SPREAD, method, fired, f"std over seeds {mine:.4g} vs {ref_name}'s {theirs:.4g}{ratio}")


def detect(
    method: str,
    records: Sequence[RunRecord],
    failed: Sequence[RunRecord],
    reference: Sequence[RunRecord] | None,
    ref_name: str,
    trivial: float | None,
    higher: bool = True,
) -> list[Flag]:
    """Every detector that applies to one method: the comparisons need the reference's records (not for the
    reference itself), rank collapse needs a rank grid."""
    flags = []
    if reference is not None:
        flags.append(slow_start(method, records, reference, ref_name))
    if any(r.diagnostics.get("rank_grid") for r in records):
        flags.append(rank_collapse(method, records))
    flags.append(budget_off(method, records))
    flags.append(bad_seeds(method, records, failed, trivial, higher))
    if reference is not None:
        flags.append(seed_spread(method, records, reference, ref_name))
    return flags
