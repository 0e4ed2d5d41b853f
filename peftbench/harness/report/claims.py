"""Everything one leaderboard table may claim, in one call: which rows are bold, which cells carry a mark, and
the legend lines that explain both. The glue between significance.py and formats.py, so the leaderboard only
builds `MethodRuns` per row and asks here how to render each of them.

    claims = judge_table(task, runs, references, baseline)
    Cell(text, value, bold=claims.bold(run.name), marks=claims.marks(run.name))
    Table(title, headers, rows, legend=claims.legend(scale=100, unit=" points"), marks=claims.mark_defs)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from peftbench.harness.report.baselines import MSE, Baseline
from peftbench.harness.report.formats import Cell, Mark
from peftbench.harness.report.significance import (
    ALPHA,
    LEARNED_ALPHA,
    MIN_SEEDS,
    DetectableDifference,
    LearnedTest,
    MethodRuns,
    TopGroup,
    learned_test,
    table_mdd,
    top_group,
)

log = logging.getLogger(__name__)

NOT_LEARNED = "not_learned"
UNTESTED = "untested"


@dataclass(frozen=True)
class TableClaims:
    top: TopGroup
    learned: Mapping[str, LearnedTest]
    mdd: DetectableDifference
    baseline: Baseline
    mark_defs: tuple[Mark, ...]

    def bold(self, name: str) -> bool:
        """In the top group, and the group is not every method (then nothing is bold)."""
        return not self.top.no_mark and self.top.in_group(name)

    def marks(self, name: str) -> tuple[str, ...]:
        t = self.learned.get(name)
        if t is None or t.not_learned is None:
            return (UNTESTED,) if any(m.key == UNTESTED for m in self.mark_defs) else ()
        return (NOT_LEARNED,) if t.not_learned else ()

    def versus_trivial(self, name: str, scale: float = 1.0) -> Cell:
        """The row's margin over the trivial baseline on the learned test's metric, with the test's one-sided p."""
        t = self.learned.get(name)
        if t is None or t.not_learned is None or math.isnan(t.margin):
            return Cell("-", math.nan)
        p = "p<0.001" if t.p < 0.001 else f"p={t.p:.3f}"
        if t.metric == MSE:  # lower is better; unscaled, as the baseline's mse line prints it
            return Cell(f"mse {t.margin:+.4f} ({p})", t.margin)
        return Cell(f"{t.margin * scale:+.2f} ({p})", t.margin * scale)

    def legend(self, scale: float = 1.0, unit: str = "") -> tuple[str, ...]:
        """Top-group line, baseline line, MDD line; the marks' meanings come with `mark_defs`."""
        b = self.baseline
        base = f"trivial baseline: {b.note or b.name}" if b.available else b.note or "no trivial baseline"
        return (self.top.legend, base, self.mdd.legend(scale, unit))


def judge_table(
    task,
    runs: Sequence[MethodRuns],
    references: Sequence | None,
    baseline: Baseline,
    alpha: float = ALPHA,
    min_seeds: int = MIN_SEEDS,
    resamples: int = 1000,
    seed: int = 0,
    learned_alpha: float = LEARNED_ALPHA,
) -> TableClaims:
    """Top group, per-row learned test (at `learned_alpha`) and the table's MDD, with the marks a renderer needs."""
    group = top_group(task, runs, references, alpha, "holm", min_seeds, resamples, seed)
    refs = references if references is not None else ()
    learned = {
        r.name: learned_test(task, r, refs, baseline, learned_alpha, 2 * resamples, seed) for r in runs if r.scores
    }
    mdd = table_mdd(task, runs, references, alpha, 0.8, min_seeds, resamples, seed)
    defs = []
    tested = [t for t in learned.values() if t.not_learned is not None]
    if any(t.not_learned for t in tested):
        defs.append(Mark(NOT_LEARNED, "†", tested[0].legend))
    untested = [t for t in learned.values() if t.not_learned is None]
    if untested:
        defs.append(Mark(UNTESTED, "‡", untested[0].legend))
    return TableClaims(group, learned, mdd, baseline, tuple(defs))
