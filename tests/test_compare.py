"""`peftbench compare` on hand-made records and prediction files, with the expected numbers worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from peftbench import registry
from peftbench.harness.cli import main
from peftbench.harness.report.compare import compare
from peftbench.harness.report.stats import make_scorer
from peftbench.records import predictions_path
from tests.helpers import build_record, write_built

N = 40
REFS = [i % 2 for i in range(N)]


def write_run(results, method, seed, preds, refs=REFS, task="sst2", budget="0.3M", requested=None, created="t0"):
    """A successful record whose primary (accuracy) matches its predictions file, as runner.py writes them."""
    acc = float(np.mean(np.asarray(preds) == np.asarray(refs)))
    spec = budget if budget != "-" else None
    if requested is None and spec:
        requested = {"0.3M": 300_000, "1.2M": 1_200_000}.get(spec)
    # Each distinct `created` stands for another config of the same seed (e.g. another lr).
    lr = 1e-3 * (1 + sum(map(ord, created)) % 97)
    rec = build_record(task, method, seed, acc, budget=spec, requested=requested, created=created, lr=lr)
    return write_built(results, rec, preds, refs)


def wrong_on(k: int) -> list[int]:
    """Predictions that miss exactly the first k examples."""
    return [1 - r if i < k else r for i, r in enumerate(REFS)]


def test_b_better_on_known_examples(tmp_path):
    # B is right everywhere; A misses the first 10 + seed examples: B - A = 10/40, 11/40, 12/40 per seed.
    for s in range(3):
        write_run(tmp_path, "lora", s, wrong_on(10 + s))
        write_run(tmp_path, "dora", s, REFS)
    c = compare(tmp_path, "sst2", "lora", "dora", "0.3M")
    assert c.seeds == (0, 1, 2) and c.warnings == ()

    st = c.seed_test
    assert st.diffs == pytest.approx((0.25, 0.275, 0.30))
    assert st.mean == pytest.approx(0.275) and st.std == pytest.approx(0.025)
    # t = 0.275 / (0.025 / sqrt 3) = 11 sqrt 3; with 2 dof the two-sided p is 1 - t / sqrt(t^2 + 2).
    t = 11 * math.sqrt(3)
    assert st.t == pytest.approx(t)
    assert st.p == pytest.approx(1 - t / math.sqrt(t * t + 2))
    half = 4.302653 * 0.025 / math.sqrt(3)  # t(0.975, 2) * se
    assert st.ci == pytest.approx((0.275 - half, 0.275 + half), abs=1e-6)

    bt = c.bootstrap
    assert bt.diff == pytest.approx(0.275)  # mean of the full-set differences
    assert bt.examples == (N, N, N) and bt.resamples == 1000 and bt.vectorised
    # A replicate's difference is the share of A's misses among the drawn indices: never below 0, about
    # 0.275 +- 2 * 0.04 (binomial sd sqrt(.275 * .725 / 40) / sqrt 3 seeds).
    assert 0.15 < bt.ci[0] < 0.275 < bt.ci[1] < 0.40
    # No replicate is as far from 0.275 as 0 is (it would need <= 0 or >= 0.55), so p is the floor 1/(R+1).
    assert bt.p == pytest.approx(1 / 1001)


def test_identical_pair(tmp_path):
    for s in range(3):
        preds = wrong_on(5 + 3 * s)
        write_run(tmp_path, "lora", s, preds)
        write_run(tmp_path, "dora", s, preds)
    c = compare(tmp_path, "sst2", "lora", "dora", "0.3M", resamples=200)
    assert c.seed_test.mean == 0.0 and c.seed_test.p == 1.0 and c.seed_test.ci == (0.0, 0.0)
    assert c.bootstrap.diff == 0.0 and c.bootstrap.ci == (0.0, 0.0) and c.bootstrap.p == 1.0


def test_cli_output_in_points(tmp_path, capsys):
    for s in range(3):
        write_run(tmp_path, "lora", s, wrong_on(10 + s))
        write_run(tmp_path, "dora", s, REFS)
    argv = ["compare", "--task", "sst2", "--budget", "0.3M", "lora", "dora", "--results", str(tmp_path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "paired t-test, n = 3): B - A = +27.50" in out
    assert "paired bootstrap, 1000 resamples of 40 'validation' examples" in out
    assert "| 0      | 75.00" in out and "+25.00" in out and "dora is ahead" in out


def test_small_n_warning(tmp_path, capsys):
    write_run(tmp_path, "lora", 0, wrong_on(8))
    write_run(tmp_path, "lora", 1, wrong_on(8))
    write_run(tmp_path, "dora", 0, REFS)
    c = compare(tmp_path, "sst2", "lora", "dora", "0.3M", resamples=100)
    assert c.seeds == (0,)
    assert any("only 1 shared seed" in w for w in c.warnings)
    assert math.isnan(c.seed_test.p) and math.isnan(c.seed_test.ci[0])
    assert c.bootstrap.diff == pytest.approx(8 / 40)
    assert main(["compare", "--task", "sst2", "lora", "dora", "--results", str(tmp_path)]) == 0
    _, err = capsys.readouterr()
    assert err.startswith("warning: only 1 shared seed")


def test_full_ft_against_a_budget_and_budget_by_count(tmp_path):
    for s in range(3):
        write_run(tmp_path, "full", s, wrong_on(4), budget="-")
        write_run(tmp_path, "lora", s, wrong_on(6), budget="0.3M")
        write_run(tmp_path, "lora", s, wrong_on(2), budget="1.2M")
    c = compare(tmp_path, "sst2", "full", "lora", "0.3M", resamples=100)
    assert c.a.budget == "-" and c.b.budget == "0.3M"
    assert c.seed_test.mean == pytest.approx(-2 / 40) and c.bootstrap.diff == pytest.approx(-2 / 40)
    # 1200K is the same budget as 1.2M: matched through the requested parameter count.
    c = compare(tmp_path, "sst2", "full", "lora", "1200K", resamples=100)
    assert c.b.budget == "1200K" and c.seed_test.mean == pytest.approx(2 / 40)


def test_duplicate_records_for_a_seed_use_the_newest(tmp_path):
    write_run(tmp_path, "lora", 0, wrong_on(20), created="2024-01-01")
    write_run(tmp_path, "lora", 0, wrong_on(4), created="2025-01-01")
    write_run(tmp_path, "dora", 0, REFS)
    c = compare(tmp_path, "sst2", "lora", "dora", resamples=50)
    assert c.seed_test.mean == pytest.approx(4 / 40)
    assert any("2 records for seed 0" in w for w in c.warnings)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_error_paths(tmp_path, capsys):
    r = ["--results", str(tmp_path)]
    base = ["compare", "--task", "sst2", "--budget", "0.3M"]
    write_run(tmp_path, "lora", 0, wrong_on(3))
    write_run(tmp_path, "lora", 1, wrong_on(3))
    assert "no successful records for sst2/dora" in _error(capsys, base + ["lora", "dora"] + r)
    write_run(tmp_path, "dora", 5, REFS)
    assert "none in common" in _error(capsys, base + ["lora", "dora"] + r)
    assert "two different methods" in _error(capsys, base + ["lora", "lora"] + r)
    assert "unknown method" in _error(capsys, base + ["lora", "nosuch"] + r).lower()
    assert "at budget 1.2M" in _error(capsys, ["compare", "--task", "sst2", "--budget", "1.2M", "lora", "dora"] + r)

    missing = write_run(tmp_path, "dora", 0, REFS)
    predictions_path(missing).unlink()
    assert "is missing" in _error(capsys, base + ["lora", "dora"] + r)
    assert main(base + ["lora", "dora", "--resamples", "0"] + r) == 0  # the seed-level test needs no predictions
    capsys.readouterr()

    write_run(tmp_path, "dora", 1, REFS[:-2], refs=REFS[:-2])
    predictions_path(missing).unlink(missing_ok=True)
    write_run(tmp_path, "dora", 0, REFS, created="t1")  # newer, with predictions
    assert "different examples" in _error(capsys, base + ["lora", "dora"] + r)

    write_run(tmp_path, "lora", 0, REFS, budget="1.2M")
    assert "pass --budget" in _error(capsys, ["compare", "--task", "sst2", "lora", "dora"] + r)


def _random_case(task, n: int, rng: np.random.Generator) -> tuple[list, list]:
    if task.head == "regression":
        refs = [float(x) for x in rng.uniform(0, 5, n)]
        return [float(x + rng.normal(0, 1)) for x in refs], refs
    if task.head == "span":
        gold = [["the cat sat"], ["on the mat", "the mat"], ["a dog"]]
        refs = [[] if task.version_2_with_negative and i % 5 == 0 else gold[i % 3] for i in range(n)]
        options = ["the cat sat", "the cat", "mat", "", "a big dog", "on the mat"]
        return [options[i] for i in rng.integers(0, len(options), n)], refs
    refs = [int(x) for x in rng.integers(0, task.num_labels, n)]
    return [r if rng.random() < 0.7 else int((r + 1) % task.num_labels) for r in refs], refs


@pytest.mark.parametrize("name", ["mrpc", "cola", "stsb", "mnli", "squad", "squad_v2"])
def test_vectorised_scorers_match_metric_on(name):
    task = registry.tasks.get(name)
    rng = np.random.default_rng(1)
    preds, refs = _random_case(task, 60, rng)
    score, vectorised = make_scorer(task, preds, refs)
    assert vectorised
    idx = rng.integers(0, len(refs), size=(4, len(refs)))
    want = [task.metric_on([preds[i] for i in row], [refs[i] for i in row]) for row in idx]
    assert score(idx) == pytest.approx(want, abs=1e-9)


def test_scorer_falls_back_when_the_formula_disagrees():
    # A task that calls its metric "accuracy" but computes something else: the numpy path must not be used.
    fake = SimpleNamespace(name="fake", head="classification", primary_metric="accuracy", num_labels=2,
                           metric_on=lambda p, r: float(np.mean(np.asarray(p) == 1)))  # fmt: skip
    preds, refs = [1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0]
    score, vectorised = make_scorer(fake, preds, refs)
    assert not vectorised
    idx = np.array([[0, 0, 1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 1, 1, 1, 1]])
    assert score(idx).tolist() == [5 / 8, 0.0]  # the share of predictions equal to 1 in each row
