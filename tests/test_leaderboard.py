"""The leaderboard's honest tables, end to end on hand-made records with stored predictions: trivial baseline rows,
not-learned marks, top groups, family summaries, every format parsed back, and filters that match nothing."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections import Counter

import pytest

from peftbench import registry
from peftbench.harness.cli import main
from peftbench.harness.report.aggregate import runs_frame, summarize
from peftbench.harness.report.leaderboard import render
from peftbench.harness.run.data import load_rows
from tests.helpers import build_record, quick_run, write_built
from tests.test_formats import parse

N = 200
REFS = [1, 0] * (N // 2)


def preds_with(correct: int, refs=REFS) -> list[int]:
    """Right on the first `correct` examples, wrong on the rest."""
    return [r if i < correct else 1 - r for i, r in enumerate(refs)]


def record(results, method, seed, preds, refs=REFS, task="sst2", **kw):
    acc = sum(p == r for p, r in zip(preds, refs, strict=True)) / len(refs)
    write_built(results, build_record(task, method, seed, acc, **kw), preds, refs)


@pytest.fixture()
def results(tmp_path):
    """sst2 at 0.3M over 3 seeds: lora and dora learn (and tie), head is the probe, bitfit never left the majority
    class; rte: lora and full, near chance."""
    for seed in range(3):
        record(tmp_path, "full", seed, preds_with(150 + seed), adapter=22_000_000)
        record(tmp_path, "head", seed, preds_with(120 + seed), adapter=0)
        record(tmp_path, "lora", seed, preds_with(176 + seed), budget="0.3M", adapter=290_304)
        record(tmp_path, "dora", seed, preds_with(177 + seed), budget="0.3M", adapter=311_040)
        record(tmp_path, "bitfit", seed, [majority("sst2")] * N, adapter=20_000)
        record(tmp_path, "lora", seed, preds_with(100 + seed), task="rte", budget="0.3M")
        record(tmp_path, "full", seed, preds_with(101 + seed), task="rte")
    return tmp_path


def majority(task: str) -> int:
    spec = registry.tasks.get(task)
    counts = Counter(r[spec.label_field] for r in load_rows(spec, "sample", spec.train_split))
    return min(y for y, c in counts.items() if c == max(counts.values()))


def table_of(md: str, title: str) -> str:
    return md.split(f"### {title}", 1)[1].split("\n### ", 1)[0]


def test_markdown_marks_ties_baselines_and_explains_itself(results):
    md = render(summarize(runs_frame(results)))
    sst2 = table_of(md, "sst2 @ 0.3M (profile quick)")
    # lora and dora tie at the top (one example apart per seed); full and head are separated below them.
    assert "| dora | 0.3M | **89.00 ± 0.50** |" in sst2
    assert "| lora | 0.3M | **88.50 ± 0.50** |" in sst2
    assert "| full | - | 75.50 ± 0.50 | 3 | +25.50 (p<0.001) |" in sst2
    # 10.5 points above the majority class on 200 examples is p = 0.017: not "learned" at the leaderboard's α 0.01.
    assert "| head | - | 60.50 ± 0.50† | 3 | +10.50 (p=0.017) |" in sst2
    assert "| trivial: majority class (" in sst2  # the baseline is a row of the table, computed from training rows
    assert re.search(r"\| bitfit \| - \| 50\.00 ± 0\.00† \|", sst2)  # never left the majority class
    for line in ("mean ± std over n seeds", "† not learned: not better than the trivial baseline (one-sided paired "
                 "t-test", "bold: best mean and every method not significantly worse", "Holm over 4 comparison(s)",
                 "minimum detectable difference at 3 seed(s) and 200 examples", "trivial baseline: label",
                 "vs trivial: the row's mean minus the trivial baseline", "α = 0.01)"):  # fmt: skip
        assert line in sst2, line
    # rte: nothing separates the two, so nothing is bold, and the legend says why.
    rte = table_of(md, "rte @ 0.3M (profile quick)")
    assert "**" not in rte and "no method marked" in rte


def test_a_table_at_the_majority_class_is_flagged_and_crowns_nobody(tmp_path):
    label = majority("sst2")
    for seed in range(3):
        for method, budget in (("full", None), ("lora", "0.3M"), ("head", None)):
            record(tmp_path, method, seed, [label] * N, budget=budget)
    md = render(summarize(runs_frame(tmp_path)))
    rows = [line for line in md.splitlines() if line.startswith(("| full", "| lora", "| head"))]
    assert len(rows) == 3 and all(" ± 0.00† |" in r for r in rows)
    assert "**" not in md and "no method marked" in md


def test_glue_summary_averages_the_tasks_every_row_has_and_names_them(results):
    md = render(summarize(runs_frame(results)))
    summary = table_of(md, "GLUE summary @ 0.3M (profile quick; primary metrics)")
    header = summary.splitlines()[2]
    assert header == "| method | budget | rte | sst2 | avg over sst2 |"
    assert "left out of the average (missing for some row): rte" in summary
    assert re.search(r"\| head \| - \| missing \| 60\.50 \| 60\.50 \|", summary)
    assert re.search(r"\| lora \| 0\.3M \| 50\.\d\d \| 88\.\d\d \| \*\*88\.\d\d\*\* \|", summary)


def test_html_is_one_standalone_page_without_markdown(results):
    page = render(summarize(runs_frame(results)), "html")
    c = parse(page)
    assert page.startswith("<!doctype html>") and c.problems == [] and c.stack == []
    assert "style" in c.seen and c.seen.count("table") == 3 and "strong" in c.seen
    text = "".join(c.text)
    assert "**" not in page and "not learned" in text and "minimum detectable difference" in text


def test_latex_uses_textbf_escapes_and_compiles(results, tmp_path):
    tex = render(summarize(runs_frame(results)), "latex")
    assert "**" not in tex and r"\textbf{" in tex and r"\dag{}" in tex and r"$\pm$" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed; escaping is checked above")
    doc = "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n\\begin{document}\n"
    (tmp_path / "lb.tex").write_text(doc + tex + "\\end{document}\n", encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "lb.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]


def test_csv_counts_are_integers_and_claims_are_columns(results):
    rows = list(csv.DictReader(io.StringIO(render(summarize(runs_frame(results)), "csv"))))
    assert list(rows[0])[:4] == ["task", "method", "budget", "settings"]  # no unexplained variant hash
    for r in rows:
        for key in ("n", "failed", "adapter params", "trainable", "peak memory bytes"):
            assert r[key] == "" or str(int(r[key])) == r[key], (key, r[key])
    by = {(r["task"], r["method"]): r for r in rows}
    assert by["sst2", "bitfit"]["learned"] == "0" and by["sst2", "lora"]["learned"] == "1"
    assert by["sst2", "lora"]["top group"] == "1" and by["sst2", "full"]["top group"] == "0"
    assert by["sst2", "lora"]["adapter params"] == "290304" and by["sst2", "lora"]["budget requested"] == "300000"
    assert by["sst2", "lora"]["trivial baseline name"].startswith("majority class")


def test_regression_baseline_says_pearson_is_undefined(tmp_path):
    refs = [float(i % 5) for i in range(60)]
    for seed in range(2):
        preds = [y + 0.1 * ((i + seed) % 3) for i, y in enumerate(refs)]
        rec = build_record("stsb", "lora", seed, 0.9, primary_name="pearson", budget="0.3M")
        write_built(tmp_path, rec, preds, refs)
    md = render(summarize(runs_frame(tmp_path)))
    assert "| trivial: training mean | - | undefined |" in md
    assert "undefined for a constant prediction" in md and "trivial baseline mse:" in md


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["leaderboard", "--tasks", "sst3"], "unknown task 'sst3'; did you mean sst2"),
        (["leaderboard", "--methods", "lorra"], "unknown method 'lorra'; did you mean lora"),
        (["leaderboard", "--profiles", "quik"], "unknown profile 'quik'"),
        (["leaderboard", "--tasks", "cola"], "no run records of task cola; tasks with records: rte, sst2"),
        (["regress", "--tasks", "sst3"], "unknown task 'sst3'"),
        (["regress", "--methods", "lorra"], "unknown method 'lorra'"),
    ],
)
def test_filters_that_match_nothing_are_one_line_errors(results, capsys, argv, needle):
    assert main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    if "valid" in err:
        assert "valid" in err and "," in err.split("valid", 1)[1]


@pytest.mark.slow
def test_a_default_budgeted_adalora_run_lands_within_one_triplet(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, method="adalora", budget="3K", sets=("max_steps=10",))
    assert rec.ok, rec.error
    costs = [d_in + d_out + 1 for d_in, d_out in ((32, 32), (32, 37), (37, 32))]
    assert 3000 - max(costs) < rec.params.adapter <= 3000
    assert rec.config.method_config["budget_unit"] == "params" and rec.params.adapter_peak > rec.params.adapter
    md = render(summarize(runs_frame(tmp_path)))
    assert "peak adapter params" in md and "§" not in md  # the paper's mode would be labelled; this is not it
