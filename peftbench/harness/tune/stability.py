"""Did a tuning run learn at all? Each seed's dev predictions against the trivial baseline of its own rows.

A learning rate at the edge of divergence wins a dev grid and then, on more rows or another seed, collapses to
the majority class (measured: quick MNLI LoRA at 1.4e-3 scored best on dev over two seeds, while 2e-3 collapsed
on both, and the 3,000-row run at 1.4e-3 collapsed at seed 0). The grid already shows the danger: the next value
up did not learn. `choose.stable_best` uses these flags to keep away from that edge.

The test is the leaderboard's "learned?" test (significance.learned_test at LEARNED_ALPHA), run per seed on the
dev split, against the trivial predictor of the training rows the run used. A task without a trivial baseline
(SQuAD v1.1) or a record without predictions gives no flag, and the rule then has nothing to say about it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from peftbench.errors import UsageError

log = logging.getLogger(__name__)

DEV_SPLIT = "dev"


def learned_on_dev(task, record_file: Path) -> bool | None:
    """True/False: the run beat (or did not beat) its trivial baseline on dev at LEARNED_ALPHA; None: untestable."""
    from peftbench.harness.report.baselines import trivial_baseline
    from peftbench.harness.report.compare import load_predictions
    from peftbench.harness.report.significance import LEARNED_ALPHA, MethodRuns, learned_test
    from peftbench.records import load_record

    rec = load_record(record_file).record
    if rec is None or rec.status != "ok":
        return None
    try:
        preds, refs = load_predictions(record_file, DEV_SPLIT)
    except UsageError as e:
        log.debug("%s: %s", record_file, e)
        return None
    t = rec.config.train
    labels = _training_labels(task.name, rec.config.data, t.train_rows, t.dev_rows)
    if labels is None:
        return None
    try:
        base = trivial_baseline(task, labels, refs)
    except ValueError as e:
        log.debug("%s: no trivial baseline on dev (%s)", record_file, e)
        return None
    if not base.available:
        return None
    runs = MethodRuns(rec.config.method, {rec.config.seed: 0.0}, {rec.config.seed: preds})
    flag = learned_test(task, runs, refs, base, alpha=LEARNED_ALPHA).not_learned
    return None if flag is None else not flag


@cache  # every grid point of a task trains on the same rows: read them once per tune
def _training_labels(task_name: str, data: str, train_rows: int, dev_rows: int) -> tuple | None:
    from peftbench import registry
    from peftbench.harness.report.evidence import run_training_labels

    try:
        return tuple(run_training_labels(registry.tasks.get(task_name), data, train_rows, dev_rows))
    except (UsageError, OSError, KeyError) as e:
        log.debug("%s: training rows unreadable (%s)", task_name, e)
        return None


def collapsed_seeds(task, records: Mapping[int, Path]) -> tuple[int, ...]:
    """The seeds (of one grid point) whose dev run did not learn."""
    return tuple(sorted(s for s, f in records.items() if learned_on_dev(task, f) is False))
