"""Trivial baselines on hand-made rows, with the expected numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from peftbench import registry
from peftbench.harness.report.baselines import MSE, reference_baseline, training_labels, trivial_baseline
from peftbench.tasks import squad_metrics


def task(name: str):
    return registry.tasks.get(name)


def test_majority_class_scored_with_the_tasks_accuracy():
    train = [{"sentence": "a", "label": y} for y in (1, 1, 0, 1, 0)]
    refs = [1, 0, 0, 1, 1, 0, 1, 1]  # 5 of 8 are 1
    b = trivial_baseline(task("sst2"), training_labels(task("sst2"), train), refs)
    assert b.name == "majority class (1)" and b.available
    assert b.predictions == (1,) * 8
    assert b.metrics == {"accuracy": pytest.approx(5 / 8)}
    assert b.primary(task("sst2")) == pytest.approx(5 / 8)
    assert "60.0%" in b.note


def test_majority_is_the_training_majority_not_the_evaluation_one():
    # Training says 0, evaluation is mostly 1: the baseline must not peek at the evaluation labels.
    b = trivial_baseline(task("rte"), [0, 0, 1], [1, 1, 1, 0])
    assert b.predictions == (0, 0, 0, 0) and b.metrics["accuracy"] == pytest.approx(0.25)


def test_tied_majority_takes_the_smallest_label_whatever_the_order():
    a = trivial_baseline(task("sst2"), [1, 0], [0, 1])
    b = trivial_baseline(task("sst2"), [0, 1], [0, 1])
    assert a.predictions == b.predictions == (0, 0) and "tied" in a.note


def test_mrpc_accuracy_f1_and_combined():
    # Majority 1 on refs [1, 0, 0, 1]: accuracy 1/2; tp 2, fp 2, fn 0 -> F1 = 4 / 6; combined their mean.
    b = trivial_baseline(task("mrpc"), [1, 1, 0], [1, 0, 0, 1])
    assert b.metrics["accuracy"] == pytest.approx(0.5)
    assert b.metrics["f1"] == pytest.approx(2 / 3)
    assert b.metrics["combined"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_mrpc_majority_zero_has_f1_zero():
    b = trivial_baseline(task("mrpc"), [0, 0, 1], [1, 0, 0, 1])
    assert b.metrics["f1"] == 0.0 and b.metrics["combined"] == pytest.approx(0.25)


def test_cola_constant_prediction_has_mcc_zero():
    b = trivial_baseline(task("cola"), [1, 1, 0], [1, 0, 0, 1, 1])
    assert set(b.metrics) == {"matthews_correlation"} and b.metrics["matthews_correlation"] == 0.0
    assert "convention" in b.note


def test_mnli_three_classes():
    b = trivial_baseline(task("mnli"), [2, 2, 1, 0, 2], [0, 1, 2, 2])
    assert b.predictions == (2, 2, 2, 2) and b.metrics["accuracy"] == pytest.approx(0.5)


def test_stsb_training_mean_has_no_correlation_but_an_mse():
    b = trivial_baseline(task("stsb"), [1.0, 2.0, 4.5], [0.0, 5.0, 2.5])
    assert b.name == "training mean" and b.predictions == (2.5, 2.5, 2.5)
    for m in ("pearson", "spearmanr", "combined"):
        assert b.metrics[m] is None and "constant" in b.undefined[m]
    assert b.primary(task("stsb")) is None
    assert b.metrics[MSE] == pytest.approx((2.5**2 + 2.5**2 + 0) / 3)


def test_squad_v2_all_abstain_scored_with_the_official_metric():
    refs = [[], ["Paris", "paris"], [], ["1066"]]
    b = trivial_baseline(task("squad_v2"), [], refs)
    assert b.name == "all abstain" and b.predictions == ("",) * 4
    # Half the questions are unanswerable: abstaining gets exactly those right.
    assert b.metrics["exact"] == pytest.approx(50.0) and b.metrics["f1"] == pytest.approx(50.0)
    assert b.metrics["NoAns_f1"] == 100.0 and b.metrics["HasAns_f1"] == 0.0
    assert b.metrics["f1"] == pytest.approx(squad_metrics.compute(True, [""] * 4, refs)["f1"])


def test_squad_v1_has_no_trivial_baseline():
    b = trivial_baseline(task("squad"), [], [["a"], ["b"]])
    assert not b.available and b.predictions is None
    assert all(v is None for v in b.metrics.values()) and "untrained-head" in b.note


def test_reference_baseline_scores_given_predictions():
    refs = [["the cat"], ["a dog"]]
    b = reference_baseline(task("squad"), "untrained head", ["cat", "bird"], refs)
    assert b.available and b.metrics["exact_match"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="2 references"):
        reference_baseline(task("squad"), "x", ["cat"], refs)


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="no evaluation references"):
        trivial_baseline(task("sst2"), [1], [])
    with pytest.raises(ValueError, match="no training labels"):
        trivial_baseline(task("sst2"), [], [1])
    with pytest.raises(ValueError, match="no training labels"):
        trivial_baseline(task("stsb"), [], [1.0])


def test_metrics_are_plain_floats():
    b = trivial_baseline(task("qqp"), [0, 0, 1], [0, 1, 1, 0])
    assert all(isinstance(v, float) and not math.isnan(v) for v in b.metrics.values())
