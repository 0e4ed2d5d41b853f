"""Learned?, ties and the minimum detectable difference, on constructed predictions with known differences.

SST-2's validation split has 872 examples; the constructed methods err on examples drawn with a shared
difficulty (models miss the same hard examples), a fixed number of errors per seed so the scores are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from peftbench import registry
from peftbench.harness.report.baselines import trivial_baseline
from peftbench.harness.report.significance import (
    MethodRuns,
    holm,
    holm_adjusted,
    learned_test,
    min_detectable_difference,
    table_mdd,
    top_group,
)

N = 872
_rng = np.random.default_rng(2024)
REFS = _rng.integers(0, 2, N).tolist()
HARDNESS = _rng.exponential(1.0, N)
TRAIN = [1] * 60 + [0] * 40  # majority class 1


def sst2():
    return registry.tasks.get("sst2")


def errors(k: int, seed: int) -> list[int]:
    """Predictions that miss k examples, drawn by hardness."""
    wrong = np.random.default_rng(seed).choice(N, size=k, replace=False, p=HARDNESS / HARDNESS.sum())
    p = np.asarray(REFS)
    p[wrong] = 1 - p[wrong]
    return p.tolist()


def method(name: str, errs: list[int], salt: int, with_predictions: bool = True) -> MethodRuns:
    preds = {s: errors(k, 1000 * salt + s) for s, k in enumerate(errs)}
    scores = {s: 1 - k / N for s, k in enumerate(errs)}
    return MethodRuns(name, scores, preds if with_predictions else {})


# --- ties, not winners ---------------------------------------------------------------------------------------------


def test_three_points_is_separated_and_a_third_of_a_point_is_a_tie():
    best = method("dora", [66, 70, 75], 1)  # ~92.0%
    far = method("adalora", [93, 97, 104], 2)  # ~3.1 points below
    near = method("lora", [70, 68, 79], 3)  # ~0.23 points below, with ordinary seed noise
    g = top_group(sst2(), [far, best, near], REFS)
    assert g.best == "dora"
    assert g.members == ("dora", "lora") and not g.in_group("adalora") and not g.no_mark
    t_far = next(t for t in g.tests if t.method == "adalora")
    assert t_far.diff == pytest.approx(27.67 / N, abs=1e-4)
    assert t_far.p_seeds < 0.01 and t_far.p_examples < 0.01 and t_far.separated
    t_near = next(t for t in g.tests if t.method == "lora")
    assert not t_near.separated and t_near.p_examples > 0.2
    assert "Holm over 2 comparison(s)" in g.legend and "bold" in g.legend


def test_a_steady_third_of_a_point_over_seeds_is_still_a_tie_on_the_examples():
    # The same 0.3-point gap on every seed makes the seed t-test reject; 872 examples cannot tell it, and
    # separation needs both tests, so the two stay tied.
    best = method("dora", [66, 70, 75], 1)
    near = method("lora", [69, 73, 78], 4)
    g = top_group(sst2(), [best, near], REFS)
    (t,) = g.tests
    assert t.p_seeds < 0.05 < t.p_examples and t.p == t.p_examples
    assert g.no_mark and g.members == ("dora", "lora") and "no method marked" in g.legend


def test_few_seeds_use_the_bootstrap_alone():
    best = method("dora", [66, 70], 1)
    far = method("adalora", [93, 97], 2)
    g = top_group(sst2(), [best, far], REFS)
    (t,) = g.tests
    assert t.p_seeds is None and t.p == t.p_examples < 0.05 and t.separated


def test_few_seeds_without_predictions_cannot_separate():
    g = top_group(sst2(), [method("a", [66, 70], 1, False), method("b", [130, 140], 2, False)], REFS)
    (t,) = g.tests
    assert math.isnan(t.p) and not t.separated and "untestable" in t.note and g.no_mark


def seed_only(name: str, scores: list[float]) -> MethodRuns:
    return MethodRuns(name, dict(enumerate(scores)))


def test_holm_changes_the_decision():
    # Per-seed gaps 1 ± 0.3464 points give t = 5 with 2 dof: p = 0.038 for each of two methods. Uncorrected,
    # both are below 0.05 and leave the group; Holm doubles the smaller p (0.075), so both stay tied.
    best = [0.90, 0.91, 0.92]
    a = 0.003464
    gaps = [0.01 - a, 0.01, 0.01 + a]
    runs = [
        seed_only("best", best),
        seed_only("b", [x - g for x, g in zip(best, gaps, strict=True)]),
        seed_only("c", [x - g for x, g in zip(best, gaps[::-1], strict=True)]),
    ]
    p = 2 * stats.t.sf(5.0, 2)
    plain = top_group(sst2(), runs, correction="none")
    corrected = top_group(sst2(), runs)
    assert all(t.p == pytest.approx(p, rel=1e-3) and t.p_examples is None for t in plain.tests)
    assert plain.members == ("best",) and "no multiplicity correction" in plain.legend
    assert corrected.members == ("best", "b", "c") and corrected.no_mark
    assert all(t.p_holm == pytest.approx(2 * p, rel=1e-3) for t in corrected.tests)


def test_holm_step_down():
    p = [0.01, 0.04, 0.03, math.nan]
    assert holm(p, 0.05) == (True, False, False, False)
    assert [p_ <= 0.05 for p_ in p[:3]] == [True, True, True]  # what no correction would reject
    assert holm_adjusted(p)[:3] == pytest.approx((0.03, 0.06, 0.06))
    assert math.isnan(holm_adjusted(p)[3])
    # Step-down: once one is kept, the larger ones are kept too.
    assert holm([0.001, 0.02, 0.026], 0.05) == (True, True, True)


def test_top_group_edge_cases():
    single = top_group(sst2(), [seed_only("only", [0.9, 0.91, 0.92])])
    assert single.members == ("only",) and single.no_mark and single.tests == ()
    g = top_group(sst2(), [seed_only("a", [0.9, 0.91, 0.92]), MethodRuns("missing", {})])
    assert g.excluded == ("missing",) and g.members == ("a",)
    with pytest.raises(ValueError, match="unique"):
        top_group(sst2(), [seed_only("a", [0.9]), seed_only("a", [0.8])])
    with pytest.raises(ValueError, match="correction"):
        top_group(sst2(), [seed_only("a", [0.9])], correction="bonferroni")
    disjoint = top_group(sst2(), [MethodRuns("a", {0: 0.9}), MethodRuns("b", {1: 0.5})])
    assert disjoint.no_mark and "no seed shared" in disjoint.tests[0].note


# --- learned? ----------------------------------------------------------------------------------------------------


def test_the_majority_class_is_flagged_not_learned():
    base = trivial_baseline(sst2(), TRAIN, REFS)
    majority = MethodRuns("lora", {s: base.metrics["accuracy"] for s in range(3)}, {s: [1] * N for s in range(3)})
    t = learned_test(sst2(), majority, REFS, base)
    assert t.test == "correctness" and t.not_learned is True
    assert t.margin == 0.0 and t.p == pytest.approx(0.5) and t.seeds == (0, 1, 2)
    assert "paired t-test" in t.legend and "α = 0.05" in t.legend


def test_a_trained_method_learned():
    base = trivial_baseline(sst2(), TRAIN, REFS)
    t = learned_test(sst2(), method("lora", [66, 70, 75], 1), REFS, base)
    assert t.not_learned is False and t.p < 1e-6
    assert t.margin == pytest.approx(1 - 70.33 / N - base.metrics["accuracy"], abs=1e-4)


def test_alpha_is_a_parameter():
    # Beats the majority on 28 examples and loses on 15: one-sided p between 0.01 and 0.05.
    base = trivial_baseline(sst2(), TRAIN, REFS)
    ones = [i for i, y in enumerate(REFS) if y == 1]
    zeros = [i for i, y in enumerate(REFS) if y == 0]
    p = [1] * N
    for i in zeros[:28]:
        p[i] = 0
    for i in ones[:15]:
        p[i] = 0
    runs = MethodRuns("m", {0: 0.0}, {0: p})
    loose = learned_test(sst2(), runs, REFS, base, alpha=0.05)
    strict = learned_test(sst2(), runs, REFS, base, alpha=0.01)
    assert 0.01 < loose.p < 0.05 and loose.p == strict.p
    assert loose.not_learned is False and strict.not_learned is True and "α = 0.01" in strict.legend


def test_cola_uses_the_bootstrap_on_mcc():
    cola = registry.tasks.get("cola")
    base = trivial_baseline(cola, TRAIN, REFS)
    flat = learned_test(cola, MethodRuns("m", {0: 0.0, 1: 0.0}, {0: [1] * N, 1: [1] * N}), REFS, base, resamples=300)
    assert flat.test == "bootstrap" and flat.metric == "matthews_correlation" and flat.not_learned is True
    good = learned_test(cola, method("m", [150, 160], 5), REFS, base, resamples=300)
    assert good.not_learned is False and good.margin > 0.5 and good.p == pytest.approx(1 / 301)


def test_stsb_compares_squared_errors_with_the_training_mean():
    stsb = registry.tasks.get("stsb")
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, 300)
    base = trivial_baseline(stsb, rng.uniform(0, 5, 500).tolist(), y.tolist())
    close = {s: (y + rng.normal(0, 0.8, y.size)).tolist() for s in range(3)}
    t = learned_test(stsb, MethodRuns("m", dict.fromkeys(range(3), 0.8), close), y.tolist(), base)
    assert t.test == "squared_error" and t.metric == "mse" and t.not_learned is False and t.margin < -1
    flat = {s: list(base.predictions) for s in range(3)}
    t = learned_test(stsb, MethodRuns("m", dict.fromkeys(range(3), 0.0), flat), y.tolist(), base)
    assert t.not_learned is True and t.margin == 0.0


def test_squad_v2_against_abstaining_and_v1_untested():
    v2 = registry.tasks.get("squad_v2")
    refs = [[] if i % 2 else [f"answer {i}"] for i in range(60)]
    base = trivial_baseline(v2, [], refs)
    abstain = learned_test(v2, MethodRuns("m", {0: 50.0}, {0: [""] * 60}), refs, base, resamples=200)
    assert abstain.not_learned is True
    right = [r[0] if r else "" for r in refs]
    assert learned_test(v2, MethodRuns("m", {0: 100.0}, {0: right}), refs, base, resamples=200).not_learned is False
    v1 = registry.tasks.get("squad")
    t = learned_test(v1, MethodRuns("m", {0: 90.0}, {0: ["a"]}), [["a"]], trivial_baseline(v1, [], [["a"]]))
    assert t.test == "untested" and t.not_learned is None and "untrained-head" in t.legend


def test_without_predictions_the_cell_is_untested():
    base = trivial_baseline(sst2(), TRAIN, REFS)
    t = learned_test(sst2(), MethodRuns("m", {0: 0.9}), REFS, base)
    assert t.not_learned is None and "no per-example predictions" in t.note


# --- minimum detectable difference -------------------------------------------------------------------------------


def test_mdd_formula():
    s2_seed, n, s2_ex = 1e-4, 3, 0.9 * 0.1 / 872
    d = min_detectable_difference(s2_seed, n, s2_ex, 872)
    seed_term = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * math.sqrt(2 * s2_seed / n)
    example_term = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt(2 * s2_ex)
    assert d.seed_term == pytest.approx(seed_term) and d.example_term == pytest.approx(example_term)
    assert d.value == pytest.approx(max(seed_term, example_term)) == pytest.approx(0.0438, abs=1e-4)
    assert "4.38 points" in d.legend(scale=100, unit=" points") and "3 seed(s) and 872 examples" in d.legend()
    # Two seeds: no seed test runs, so only the examples count; nothing at all: no difference is detectable.
    assert min_detectable_difference(s2_seed, 2, s2_ex).value == pytest.approx(example_term)
    assert math.isinf(min_detectable_difference(None, 1, None).value)


def test_table_mdd_estimates_both_variances():
    runs = [method("a", [66, 70, 75], 1), method("b", [93, 97, 104], 2)]
    d = table_mdd(sst2(), runs, REFS, resamples=2000)
    acc = [np.mean(list(r.scores.values())) for r in runs]
    assert d.example_variance == pytest.approx(np.mean([a * (1 - a) / N for a in acc]), rel=0.15)
    pooled = np.mean([np.var(list(r.scores.values()), ddof=1) for r in runs])  # equal seed counts
    assert d.seed_variance == pytest.approx(pooled) and d.n_seeds == 3 and d.n_examples == N
