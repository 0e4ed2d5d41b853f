"""Aggregation and leaderboards on hand-made records, with numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from peftbench.harness.cli import main
from peftbench.harness.report.aggregate import runs_frame, summarize
from peftbench.harness.report.leaderboard import render
from tests.helpers import build_record, write_built


def make_record(results, task, method, seed, primary, budget=None, status="ok", adapter=1000, extra=None, **kw):
    rec = build_record(task, method, seed, primary, budget=budget, status=status, adapter=adapter,
                       extra_metrics=extra, **kw)  # fmt: skip
    write_built(results, rec)
    return rec


def test_mean_std_n_and_t_interval(tmp_path):
    for seed, acc in enumerate([0.80, 0.82, 0.84]):
        make_record(tmp_path, "sst2", "lora", seed, acc, budget="0.3M")
    make_record(tmp_path, "sst2", "lora", 3, 0.0, budget="0.3M", status="failed")
    s = summarize(runs_frame(tmp_path))
    row = s.iloc[0]
    assert row["n"] == 3 and row["failed"] == 1 and row["seeds"] == "0,1,2"
    assert row["primary.mean"] == pytest.approx(0.82)
    assert row["primary.std"] == pytest.approx(0.02)
    # t(0.975, df=2) = 4.302653; 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert row["primary.ci95"] == pytest.approx(0.049683, abs=1e-6)
    assert row["metric.accuracy.mean"] == pytest.approx(0.82)


def test_single_seed_has_no_std(tmp_path):
    make_record(tmp_path, "rte", "full", 0, 0.6)
    row = summarize(runs_frame(tmp_path)).iloc[0]
    assert row["n"] == 1 and math.isnan(row["primary.std"]) and math.isnan(row["primary.ci95"])


def scored(results, task, method, seed, correct, n=200, **kw):
    """A record whose stored predictions get `correct` of `n` examples right (references alternate 1, 0)."""
    refs = [1, 0] * (n // 2)
    preds = [r if i < correct else 1 - r for i, r in enumerate(refs)]
    rec = build_record(task, method, seed, correct / n, **kw)
    write_built(results, rec, preds, refs)
    return rec


def test_full_appears_in_every_budget_table_and_best_is_marked(tmp_path):
    scored(tmp_path, "sst2", "full", 0, 180, adapter=22_000_000)
    scored(tmp_path, "sst2", "lora", 0, 170, budget="0.3M")
    scored(tmp_path, "sst2", "lora", 0, 198, budget="1.2M")
    text = render(summarize(runs_frame(tmp_path)))
    assert "### sst2 @ 0.3M" in text and "### sst2 @ 1.2M" in text
    t03, t12 = text.split("### sst2 @ 1.2M")
    assert "full" in t03 and "full" in t12
    # One seed: the paired bootstrap over the 200 examples separates 10 discordant examples, all one way.
    assert "**90.00**" in t03 and "**85.00**" not in t03  # full beats LoRA at 0.3M
    assert "**99.00**" in t12 and "**90.00**" not in t12
    assert "22.000M" in text


def test_a_tie_inside_the_noise_marks_nothing(tmp_path):
    scored(tmp_path, "sst2", "full", 0, 180)
    scored(tmp_path, "sst2", "lora", 0, 182, budget="0.3M")
    text = render(summarize(runs_frame(tmp_path)))
    assert "**" not in text.replace("\\*", "") and "no method marked" in text
    assert "minimum detectable difference at 1 seed(s) and 200 examples" in text


def test_formats(tmp_path, capsys):
    make_record(tmp_path, "sst2", "lora", 0, 0.85)
    make_record(tmp_path, "rte", "lora", 0, 0.60)
    for fmt, needle in [
        ("md", "| method"),
        ("csv", "task,method,budget"),
        ("latex", "\\begin{tabular}"),
        ("html", "<table>"),
    ]:
        assert main(["leaderboard", "--results", str(tmp_path), "--format", fmt]) == 0
        assert needle in capsys.readouterr().out
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "GLUE summary" in text and "72.50" in text  # GLUE avg of 85 and 60


def test_missing_cells_are_marked(tmp_path):
    make_record(tmp_path, "sst2", "lora", 0, 0.85)
    make_record(tmp_path, "sst2", "dora", 0, 0.0, status="failed")
    make_record(tmp_path, "rte", "lora", 0, 0.6)
    text = render(summarize(runs_frame(tmp_path)))
    assert "0 (1 failed)" in text and "missing" in text


def test_empty_results(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert "no run records" in capsys.readouterr().out


def test_runs_that_differ_in_more_than_the_seed_never_pool(tmp_path):
    # Same method and budget, but the second was trained with another learning rate: two rows, not one mean.
    make_record(tmp_path, "sst2", "lora", 0, 0.80, lr=1e-3)
    make_record(tmp_path, "sst2", "lora", 1, 0.90, lr=1e-4)
    s = summarize(runs_frame(tmp_path))
    assert len(s) == 2 and set(s["n"]) == {1}
    text = render(s)
    # The settings that tell the rows apart, in their own column (not a hash folded into the name).
    assert "| lora | train.lr=0.001 |" in text and "| lora | train.lr=0.0001 |" in text
    assert "variant: the settings in which runs of one method differ" in text


def test_profiles_get_their_own_tables(tmp_path):
    make_record(tmp_path, "sst2", "lora", 0, 0.80)
    make_record(tmp_path, "sst2", "full", 0, 0.70, profile="regress")
    text = render(summarize(runs_frame(tmp_path)))
    assert "### sst2 (profile quick)" in text and "### sst2 (profile regress)" in text
