"""Trivial baselines per task, computed from the task's own training labels and evaluation references.

A leaderboard cell means little without the score of a model that learned nothing. What "learned nothing" is
depends on the head:

- classification: the majority class of the training rows, predicted for every evaluation row and scored with
  the task's own metric module (so accuracy, F1, MCC and GLUE's `combined` are the numbers a run would get);
- regression (STS-B): the training mean for every row. Pearson and Spearman are undefined for a constant
  prediction, so those metrics are None with a reason; `mse` is given instead, and the "learned?" test compares
  squared errors (see significance.py);
- span, SQuAD v2.0: abstain on every question (empty answer), scored with the official v2.0 metric;
- span, SQuAD v1.1: no trivial baseline (every question has an answer, so abstaining is not a prediction a
  model could make usefully); the untrained-head reference run stands in, via `reference_baseline`.

Inputs are plain lists, so the leaderboard can feed them from whatever the run record becomes: training labels
(`[row[task.label_field] for row in train_rows]`) and the references stored beside a record in
`<hash>.preds.jsonl`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MSE = "mse"


@dataclass(frozen=True)
class Baseline:
    """A trivial (or reference) predictor's scores on one evaluation split.

    `metrics` are on the task's own scale (GLUE fractions, SQuAD 0-100); a metric that is undefined for this
    predictor maps to None and its reason is in `undefined`. `predictions` align with the evaluation references
    so a method can be tested against it example by example; None when there is no baseline at all."""

    task: str
    name: str
    metrics: Mapping[str, float | None]
    predictions: tuple[Any, ...] | None
    note: str = ""
    undefined: Mapping[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.predictions is not None

    def primary(self, task) -> float | None:
        """The baseline's value of the task's primary metric, None when undefined or absent."""
        return self.metrics.get(task.primary_metric)


def training_labels(task, rows: Sequence[Mapping[str, Any]]) -> list:
    """The label column of training rows, the input `trivial_baseline` wants."""
    return [row[task.label_field] for row in rows]


def trivial_baseline(task, train_labels: Sequence, references: Sequence) -> Baseline:
    """The trivial baseline of `task` on one evaluation split whose references (as stored in the predictions
    file) are `references`. `train_labels` are the training rows' labels; span tasks ignore them."""
    if not references:
        raise ValueError(f"{task.name}: no evaluation references to score a baseline on")
    if task.head == "classification":
        return _majority(task, train_labels, references)
    if task.head == "regression":
        return _training_mean(task, train_labels, references)
    if task.head == "span":
        if getattr(task, "version_2_with_negative", False):
            return _abstain(task, references)
        return Baseline(
            task=task.name,
            name="none",
            metrics={m: None for m in task.metric_names},
            predictions=None,
            note="SQuAD v1.1 has no trivial baseline (every question has an answer); "
            "compare with the untrained-head reference instead",
        )
    raise ValueError(f"{task.name}: no trivial baseline for head {task.head!r}")


def reference_baseline(task, name: str, predictions: Sequence, references: Sequence, note: str = "") -> Baseline:
    """A reference run used as the baseline, e.g. the untrained head on SQuAD v1.1: scored like any run."""
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions for {len(references)} references")
    return Baseline(task.name, name, _score(task, list(predictions), list(references)), tuple(predictions), note)


# --- per head ----------------------------------------------------------------------------------------------------


def _majority(task, train_labels: Sequence, references: Sequence) -> Baseline:
    if not train_labels:
        raise ValueError(f"{task.name}: no training labels to take the majority class from")
    counts = Counter(int(y) for y in train_labels)
    top = max(counts.values())
    # Ties are broken towards the smallest label, so the baseline does not depend on row order.
    label = min(y for y, c in counts.items() if c == top)
    share = top / len(train_labels)
    preds = [label] * len(references)
    note = f"label {label} for every row, the majority of {len(train_labels)} training rows ({share:.1%})"
    if sum(1 for c in counts.values() if c == top) > 1:
        note += "; tied with another label, the smallest label taken"
    if "matthews_correlation" in task.metric_names:
        note += "; MCC of a constant prediction is 0 by the metric's (sklearn's) convention"
    return Baseline(task.name, f"majority class ({label})", _score(task, preds, list(references)), tuple(preds), note)


def _training_mean(task, train_labels: Sequence, references: Sequence) -> Baseline:
    if not train_labels:
        raise ValueError(f"{task.name}: no training labels to take the mean of")
    mean = math.fsum(float(y) for y in train_labels) / len(train_labels)
    preds = [mean] * len(references)
    reason = "undefined for a constant prediction (zero variance)"
    undefined = {m: reason for m in task.metric_names}
    metrics: dict[str, float | None] = {m: None for m in task.metric_names}
    metrics[MSE] = math.fsum((mean - float(y)) ** 2 for y in references) / len(references)
    note = f"training mean {mean:.4g} of {len(train_labels)} rows; correlations undefined, mse given instead"
    return Baseline(task.name, "training mean", metrics, tuple(preds), note, undefined)


def _abstain(task, references: Sequence) -> Baseline:
    preds = [""] * len(references)
    unanswerable = sum(1 for r in references if not r)
    note = f"empty answer for all {len(references)} questions ({unanswerable} unanswerable)"
    return Baseline(task.name, "all abstain", _score(task, preds, list(references)), tuple(preds), note)


def _score(task, predictions: list, references: list) -> dict[str, float | None]:
    """The task's own metrics, so a baseline's numbers are the ones a run with these predictions would record."""
    if task.head == "span":
        got = task.compute_metrics(predictions, references)
        # As in the run record: the metric names of the task only (row totals left out).
        return {m: float(got[m]) for m in task.metric_names if m in got}
    from peftbench.tasks.metrics import compute

    return dict(compute(task, predictions, references))
