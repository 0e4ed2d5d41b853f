"""GLUE metrics: the local evaluate module against hand-computed values, and the `compute` dispatch."""

from __future__ import annotations

import dataclasses
import math
import socket

import numpy as np
import pytest

from peftbench import registry
from peftbench.errors import UsageError
from peftbench.tasks import glue, metrics
from peftbench.tasks.base import Features, TaskSpec

GLUE_TASKS = [t for t in vars(glue).values() if isinstance(t, TaskSpec)]


def task(name: str) -> TaskSpec:
    return registry.tasks.get(name)


def test_all_nine_glue_tasks_are_registered():
    assert sorted(t.name for t in GLUE_TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
    for t in GLUE_TASKS:
        assert registry.tasks.get(t.name) is t


def test_cola_matthews_from_a_2x2_table():
    preds = [1, 1, 0, 0, 1, 0, 1, 1]
    refs = [1, 0, 0, 0, 1, 1, 1, 1]
    # TP = 4 (positions 0,4,6,7), FP = 1 (1), FN = 1 (5), TN = 2 (2,3).
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (8 - 1) / sqrt(5*5*3*3) = 7/15
    assert metrics.compute(task("cola"), preds, refs) == {"matthews_correlation": pytest.approx(7 / 15, abs=1e-12)}
    # Exactly inverted predictions: TP = TN = 0, FP = 2, FN = 2 -> (0 - 4) / sqrt(2*2*2*2) = -1.
    assert metrics.compute(task("cola"), [1, 0, 1, 0], [0, 1, 0, 1])["matthews_correlation"] == pytest.approx(-1.0)
    # A constant prediction makes the denominator 0; the convention (sklearn, GLUE) is MCC = 0.
    assert metrics.compute(task("cola"), [1, 1, 1, 1], [1, 0, 1, 1])["matthews_correlation"] == 0.0


@pytest.mark.parametrize("name", ["sst2", "qnli", "rte", "wnli"])
def test_binary_accuracy(name):
    # Matches at positions 0, 1, 3 of 5 -> 3/5.
    assert metrics.compute(task(name), [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == {"accuracy": pytest.approx(0.6)}


def test_mnli_three_class_accuracy():
    # Matches at positions 0, 1, 2, 4 of 6 -> 4/6.
    assert metrics.compute(task("mnli"), [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]) == {"accuracy": pytest.approx(4 / 6)}


@pytest.mark.parametrize("name", ["mrpc", "qqp"])
def test_accuracy_f1_combined_from_counts(name):
    preds = [1, 1, 1, 0, 0, 1, 0, 0]
    refs = [1, 1, 0, 1, 0, 1, 0, 1]
    # TP = 3 (0,1,5), FP = 1 (2), FN = 2 (3,7), TN = 2 (4,6).
    # accuracy = (TP+TN)/8 = 5/8; F1 = 2TP / (2TP+FP+FN) = 6/9 = 2/3 (P = 3/4, R = 3/5); combined = mean.
    got = metrics.compute(task(name), preds, refs)
    assert got == {
        "accuracy": pytest.approx(5 / 8),
        "f1": pytest.approx(2 / 3),
        "combined": pytest.approx((5 / 8 + 2 / 3) / 2),
    }
    # No positive predicted or labelled: F1 is 0 by convention (no division by zero, no NaN).
    assert metrics.compute(task(name), [0, 0], [0, 0])["f1"] == 0.0


def test_stsb_pearson_spearman_combined():
    preds = [1.0, 2.0, 3.0, 10.0]
    refs = [1.0, 2.0, 3.0, 4.0]
    # Pearson: preds mean 4, deviations -3,-2,-1,6; refs mean 2.5, deviations -1.5,-0.5,0.5,1.5.
    # sum of products = 4.5+1-0.5+9 = 14; sums of squares 50 and 5 -> r = 14 / sqrt(250) = 0.885437...
    # Spearman: both rank orders are 1,2,3,4 -> rho = 1.
    pearson = 14 / math.sqrt(250)
    got = metrics.compute(task("stsb"), preds, refs)
    # abs=1e-12: a float32 round trip of the scores (the hub metric's dtype) would be off by ~1e-8.
    assert got["pearson"] == pytest.approx(pearson, abs=1e-12)
    assert got["spearmanr"] == pytest.approx(1.0, abs=1e-12)
    assert got["combined"] == pytest.approx((pearson + 1.0) / 2, abs=1e-12)
    # Swapped pairs: deviations -1.5,-0.5,0.5,1.5 vs -0.5,-1.5,1.5,0.5 -> 3/5 for both coefficients.
    got = metrics.compute(task("stsb"), [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0])
    assert got == {"pearson": pytest.approx(0.6), "spearmanr": pytest.approx(0.6), "combined": pytest.approx(0.6)}


@pytest.mark.parametrize("spec", GLUE_TASKS, ids=lambda t: t.name)
def test_keys_are_the_task_metric_names_as_plain_floats(spec):
    n = 6
    if spec.head == "regression":
        preds, refs = [0.5, 1.0, 2.0, 2.5, 4.0, 4.5], [0.0, 1.5, 2.0, 3.0, 3.5, 5.0]
    else:
        preds, refs = [i % spec.num_labels for i in range(n)], [(i // 2) % spec.num_labels for i in range(n)]
    got = metrics.compute(spec, preds, refs)
    assert tuple(got) == spec.metric_names
    assert spec.primary_metric in got
    assert all(type(v) is float for v in got.values())
    assert spec.metric_on(preds, refs) == got[spec.primary_metric]


def test_add_batch_then_compute_equals_one_shot():
    metric = metrics.load_metric("glue", "mrpc")
    metric.add_batch(predictions=[1, 1, 1], references=[1, 1, 0])
    metric.add_batch(predictions=np.array([0, 0, 1, 0, 0]), references=np.array([1, 0, 1, 0, 1]))
    batched = metric.compute()
    one_shot = metric.compute(predictions=[1, 1, 1, 0, 0, 1, 0, 0], references=[1, 1, 0, 1, 0, 1, 0, 1])
    assert batched == one_shot
    assert batched["f1"] == pytest.approx(2 / 3)


def test_evaluate_load_of_the_module_directory_directly():
    import evaluate

    metric = evaluate.load(str(metrics.module_path("glue")), config_name="cola", keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric)
    assert metric.compute(predictions=[1, 0, 1, 0], references=[0, 1, 0, 1]) == {"matthews_correlation": -1.0}


def test_loaded_module_is_cached_per_config():
    assert metrics.load_metric("glue", "sst2") is metrics.load_metric("glue", "sst2")
    assert metrics.load_metric("glue", "sst2") is not metrics.load_metric("glue", "rte")


def test_unknown_config_is_a_usage_error(monkeypatch):
    import evaluate

    with pytest.raises(UsageError, match="no config 'nope'"):
        metrics.load_metric("glue", "nope")
    # The module itself behaves like the hub's glue metric: KeyError naming the valid configs.
    with pytest.raises(KeyError, match="cola"):
        evaluate.load(str(metrics.module_path("glue")), config_name="nope", keep_in_memory=True)
    with pytest.raises(UsageError, match="no config"):
        metrics.compute(dataclasses.replace(task("rte"), metric_config="rte2"), [0], [0])


def test_unknown_metric_module_is_a_usage_error():
    with pytest.raises(UsageError, match="no metric module 'other'"):
        metrics.compute(dataclasses.replace(task("rte"), metric_module="other"), [0], [0])
    with pytest.raises(UsageError, match="no metric module 'missing'"):
        metrics.load_metric("missing")


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        metrics.compute(task("sst2"), [0, 1], [0, 1, 1])
    with pytest.raises(UsageError, match="empty"):
        metrics.compute(task("sst2"), [], [])


def test_loading_touches_no_network(monkeypatch):
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # A fresh cache so the module really is loaded (copied, imported, instantiated) under the guard.
    monkeypatch.setattr(metrics, "_LOADED", {})
    got = metrics.compute(task("qqp"), [1, 0, 1], [1, 0, 0])
    assert got["accuracy"] == pytest.approx(2 / 3)
    # Evaluate swallows connection errors on some paths, so check that nothing was even attempted.
    assert attempts == []


def test_taskspec_score_uses_these_metrics():
    spec = task("sst2")
    rows = [{"sentence": "a", "label": 1, "idx": 0}, {"sentence": "b", "label": 0, "idx": 1}]
    logits = [np.array([0.1, 0.9]), np.array([0.2, 0.1])]  # argmax 1, 0 -> both right
    scored = spec.score({"logits": logits}, Features({"input_ids": [[1], [2]]}), rows)
    assert scored.metrics == {"accuracy": 1.0}
    assert scored.predictions == [1, 0] and scored.references == [1, 0]
