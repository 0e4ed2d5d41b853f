"""What a task table's claims rest on, read from disk: the per-example predictions stored beside each record and
the task's trivial baseline computed from the training rows the runs used.

The summary frame (aggregate.summarize) says which records make up a row (`runs`: seed, primary, record path);
this module turns a table's rows into `MethodRuns` aligned with one list of references, and scores the trivial
baseline on those references. Anything that cannot be read becomes a reason in `notes`, never an exception: a
table with a missing predictions file still renders, its cells marked as untested.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.report.baselines import Baseline, training_labels, trivial_baseline
from peftbench.harness.report.significance import MethodRuns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowRuns:
    """One table row's successful runs: seed -> (recorded primary metric, record file)."""

    name: str
    runs: tuple[tuple[int, float, str], ...]


@dataclass(frozen=True)
class TableEvidence:
    runs: tuple[MethodRuns, ...]
    references: tuple | None  # None: no row has readable predictions
    baseline: Baseline
    notes: tuple[str, ...] = ()


def _no_baseline(task, reason: str) -> Baseline:
    return Baseline(task.name, "none", {m: None for m in task.metric_names}, None, reason)


def load_table(task, rows: Sequence[RowRuns]) -> TableEvidence:
    """MethodRuns per row (predictions only where their references match the table's), and the baseline."""
    from peftbench.harness.report.compare import load_predictions, primary_split

    split = primary_split(task)
    references: list | None = None
    notes: list[str] = []
    out = []
    for row in rows:
        scores, predictions = {}, {}
        for seed, primary, path in row.runs:
            scores[seed] = float(primary)
            try:
                preds, refs = load_predictions(Path(path), split)
            except UsageError as e:
                log.debug("%s: %s", row.name, e)
                continue
            if references is None:
                references = refs
            if refs != references:
                # Paired tests need one evaluation set; runs on other rows (another eval_rows) cannot join them.
                notes.append(f"{row.name} seed {seed} was evaluated on other rows; left out of the example tests")
                continue
            predictions[seed] = preds
        out.append(MethodRuns(row.name, scores, predictions))
    if references is None:
        return TableEvidence(tuple(out), None, _no_baseline(task, "no predictions stored beside the records"), ())
    return TableEvidence(tuple(out), tuple(references), _baseline(task, rows, references), tuple(notes))


def _baseline(task, rows: Sequence[RowRuns], references: list) -> Baseline:
    from peftbench.records import load_record

    sources = set()
    for row in rows:
        for _, _, path in row.runs:
            rec = load_record(Path(path)).record
            if rec is not None:
                c = rec.config
                sources.add((c.data, c.data_hash, c.train.train_rows))
    if len(sources) != 1:
        return _no_baseline(task, "the runs of this table trained on different rows (data or train_rows)")
    ((data, data_hash, train_rows),) = sources
    try:
        train = run_training_labels(task, data, train_rows)
        now = _fingerprint(task, data)
    except (UsageError, OSError, KeyError) as e:
        return _no_baseline(task, f"training rows unreadable here ({e})")
    try:
        base = trivial_baseline(task, train, references)
    except ValueError as e:
        return _no_baseline(task, str(e))
    if now != data_hash:
        log.warning("%s: the data now hashes to %s, the runs recorded %s", task.name, now, data_hash)
        base = dataclasses.replace(base, note=f"{base.note} (from today's {data} rows; the runs recorded other data)")
    return base


def _fingerprint(task, data: str) -> str:
    from peftbench.harness.run.data import data_fingerprint

    return data_fingerprint(task, data)


def run_training_labels(task, data: str, train_rows: int, dev_rows: int = 0) -> list:
    """The labels of the training rows a run with these settings trained on (its dev split held out), the input
    of its trivial baseline; a span task's trivial answer (abstain) needs none. Raises what reading them raises."""
    from peftbench.harness.run.data import load_rows, train_and_eval_rows

    if task.head == "span":
        return []
    if dev_rows:
        train, _ = train_and_eval_rows(task, data, train_rows, 0, dev_rows)
    else:
        train = load_rows(task, data, task.train_split, train_rows)
    return training_labels(task, train)
