"""One contract, every registered task: generated from the registry, like the method contract."""

from __future__ import annotations

import pytest

from peftbench import registry
from peftbench.harness.run.data import load_rows
from peftbench.tasks.metrics import compute

TASKS = registry.tasks.names()


@pytest.mark.parametrize("name", TASKS)
def test_spec_fields_are_valid(name):
    t = registry.tasks.get(name)
    assert t.name == name and t.version
    assert t.head in ("classification", "regression", "span")
    assert t.primary_metric in t.metric_names
    assert t.metric_scale in (1.0, 100.0)
    assert t.subset in ("random", "head")
    assert t.eval_splits and all(e.split for e in t.eval_splits)
    assert len({e.prefix for e in t.eval_splits}) == len(t.eval_splits)  # metric names never collide
    assert t.max_length > 0 and (t.num_labels >= 2 or t.head == "regression")


@pytest.mark.parametrize("name", TASKS)
def test_sample_rows_load_and_every_row_passes_the_check(name):
    t = registry.tasks.get(name)
    for split in [t.train_split, *(e.split for e in t.eval_splits)]:
        rows = load_rows(t, "sample", split, limit=20)
        assert 0 < len(rows) <= 20
        assert all(t.check_row(r) is None for r in rows)


@pytest.mark.parametrize("name", TASKS)
def test_metric_computes_on_a_tiny_prediction_set(name):
    t = registry.tasks.get(name)
    rows = load_rows(t, "sample", t.eval_splits[0].split, limit=8)
    if t.head == "span":
        # As the task's score() hands them to the metric: final texts and the gold answer lists.
        refs = [list(r["answers"]["text"]) for r in rows]
        preds = [(a or [""])[0] for a in refs]
        best = 100.0
    else:
        refs = [r[t.label_field] for r in rows]
        preds = list(refs)  # perfect predictions
        got = compute(t, preds, refs)
        assert list(got) == list(t.metric_names) and all(isinstance(v, float) for v in got.values())
        best = 1.0
    assert t.metric_on(preds, refs) == pytest.approx(best)
