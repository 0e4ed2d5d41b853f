"""One line per challenger: does it help, tie or hurt against the reference method at the same budget?

Both noise sources are tested on the difference challenger - reference of the primary metric, as `compare` does:
a paired t-test over shared seeds (run only with MIN_SEEDS or more: with fewer it has almost no power) and a
paired bootstrap over evaluation examples pooled over seeds. A difference counts only when every test that ran
rejects (p = the larger of the two, as for the leaderboard's top group). Before any of that, each side's learned
test against the trivial baseline (significance.learned_test): when neither learned, the difference is noise
around the baseline and the verdict says so instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from peftbench.errors import UsageError
from peftbench.harness.report.baselines import Baseline
from peftbench.harness.report.compare import load_predictions, primary_split
from peftbench.harness.report.page_groups import Arm
from peftbench.harness.report.significance import ALPHA, MIN_SEEDS, LearnedTest, MethodRuns, learned_test
from peftbench.harness.report.stats import SeedTest, paired_bootstrap, paired_t
from peftbench.records import RunRecord

log = logging.getLogger(__name__)

HELPS, TIES, HURTS, NEITHER, UNTESTED = "helps", "ties", "hurts", "neither learned", "untested"


@dataclass(frozen=True)
class Verdict:
    method: str
    reference: str
    word: str
    seeds: tuple[int, ...]
    diff: float  # challenger - reference, mean over shared seeds, on the task's own scale
    seed_test: SeedTest | None  # None below MIN_SEEDS shared seeds
    boot: tuple[float, tuple[float, float], float] | None  # (diff, 95% CI, p) over examples
    p: float  # the larger of the tests that ran; NaN when none could
    learned: tuple[LearnedTest | None, LearnedTest | None]  # challenger, reference
    achieved: tuple[float | None, float | None]  # mean adapter parameters, challenger and reference
    notes: tuple[str, ...] = ()


def predictions(records: list[RunRecord], split: str) -> tuple[dict[int, list], list | None]:
    """seed -> predictions on `split`, and the references they align with (None when none could be read)."""
    preds, refs = {}, None
    for r in records:
        if r.path is None:
            continue
        try:
            p, ref = load_predictions(r.path, split)
        except UsageError as e:
            log.warning("%s", e)
            continue
        if refs is None:
            refs = ref
        if ref == refs:
            preds[r.config.seed] = p
    return preds, refs


def method_runs(arm: Arm, split: str) -> tuple[MethodRuns, list | None]:
    preds, refs = predictions(list(arm.records), split)
    scores = {r.config.seed: float(r.metrics.primary) for r in arm.records}
    return MethodRuns(arm.method, scores, preds), refs


def _achieved(arm: Arm) -> float | None:
    counts = [r.params.adapter for r in arm.records if r.params is not None]
    return float(np.mean(counts)) if counts else None


def judge(spec, arm: Arm, ref: Arm, baseline: Baseline, resamples: int = 1000, alpha: float = ALPHA) -> Verdict:
    split = primary_split(spec)
    mine, refs_m = method_runs(arm, split)
    theirs, refs_r = method_runs(ref, split)
    refs = refs_m if refs_m is not None else refs_r
    notes = []
    learned: list[LearnedTest | None] = []
    for runs in (mine, theirs):
        learned.append(learned_test(spec, runs, refs or (), baseline, alpha, 2 * resamples) if runs.scores else None)
    achieved = (_achieved(arm), _achieved(ref))
    if all(achieved) and abs(achieved[0] - achieved[1]) > 0.05 * achieved[1]:
        notes.append(
            f"achieved budgets differ by {achieved[0] / achieved[1] - 1:+.0%} ({achieved[0]:,.0f} vs "
            f"{achieved[1]:,.0f} adapter parameters): not quite the same budget"
        )
    seeds = tuple(sorted(set(mine.scores) & set(theirs.scores)))
    if not seeds:
        return Verdict(arm.method, ref.method, UNTESTED, (), math.nan, None, None, math.nan, tuple(learned), achieved,
                       (*notes, "no seed in common"))  # fmt: skip
    diffs = [mine.scores[s] - theirs.scores[s] for s in seeds]
    seed_test = paired_t(diffs) if len(seeds) >= MIN_SEEDS else None
    if seed_test is None:
        notes.append(f"{len(seeds)} shared seed(s): the seed-level t-test needs {MIN_SEEDS}+, examples only")
    boot = None
    both = [s for s in seeds if s in mine.predictions and s in theirs.predictions]
    if both and refs:
        pairs = [(list(theirs.predictions[s]), list(mine.predictions[s]), list(refs)) for s in both]
        d, ci, p, _, dropped = paired_bootstrap(spec, pairs, resamples, 0)
        boot = (d, ci, p)
        if dropped:
            notes.append(f"{dropped} of {resamples} bootstrap replicates undefined, dropped")
    ps = [t for t in ((seed_test.p if seed_test else None), (boot[2] if boot else None)) if t is not None]
    ps = [p for p in ps if not math.isnan(p)]
    p = max(ps) if ps else math.nan
    diff = float(np.mean(diffs))
    not_learned = [t is not None and t.not_learned is True for t in learned]
    if all(not_learned):
        word = NEITHER
    elif math.isnan(p):
        word = UNTESTED
    elif p < alpha and diff != 0:
        word = HELPS if (diff > 0) == spec.higher_is_better else HURTS
    else:
        word = TIES
    if any(not_learned) and not all(not_learned):
        who = arm.label if not_learned[0] else ref.label
        notes.append(f"{who} did not learn (not better than the trivial baseline)")
    return Verdict(arm.method, ref.method, word, seeds, diff, seed_test, boot, p, tuple(learned), achieved,
                   tuple(notes))  # fmt: skip
