"""One table judged end to end: constructed SST-2 runs -> claims -> a rendered table with bold, marks, legend."""

from __future__ import annotations

from peftbench import registry
from peftbench.harness.report.baselines import trivial_baseline
from peftbench.harness.report.claims import NOT_LEARNED, UNTESTED, judge_table
from peftbench.harness.report.formats import Cell, Row, Table, to_html, to_markdown
from peftbench.harness.report.significance import MethodRuns
from tests.test_significance import REFS, TRAIN, N, method


def test_judge_and_render():
    sst2 = registry.tasks.get("sst2")
    base = trivial_baseline(sst2, TRAIN, REFS)
    runs = [
        method("dora", [66, 70, 75], 1),
        method("lora", [70, 68, 79], 3),
        method("adalora", [93, 97, 104], 2),
        MethodRuns("broken", {s: base.metrics["accuracy"] for s in range(3)}, {s: [1] * N for s in range(3)}),
        MethodRuns("old", {0: 0.91, 1: 0.915, 2: 0.9}),  # no predictions stored
    ]
    claims = judge_table(sst2, runs, REFS, base, resamples=500)
    assert [r.name for r in runs if claims.bold(r.name)] == ["dora", "lora", "old"]
    assert claims.marks("broken") == (NOT_LEARNED,) and claims.marks("dora") == ()
    assert claims.marks("old") == (UNTESTED,)
    assert {m.key for m in claims.mark_defs} == {NOT_LEARNED, UNTESTED}

    rows = tuple(
        Row((Cell(r.name), Cell(f"{r.mean * 100:.2f}", r.mean, claims.bold(r.name), claims.marks(r.name))))
        for r in runs
    )
    table = Table("sst2", ("method", "accuracy"), rows, claims.legend(100, " points"), claims.mark_defs)
    md = to_markdown(table)
    assert "| dora | **" in md and "| adalora | 88" in md and "†" in md and "‡" in md
    assert (
        "trivial baseline: label 1 for every row" in md and "minimum detectable difference" in md and "Holm over" in md
    )
    assert "<strong>" in to_html(table)


def test_all_tied_bolds_nothing():
    sst2 = registry.tasks.get("sst2")
    base = trivial_baseline(sst2, TRAIN, REFS)
    runs = [method("dora", [66, 70, 75], 1), method("lora", [70, 68, 79], 3)]
    claims = judge_table(sst2, runs, REFS, base, resamples=300)
    assert claims.top.no_mark and not any(claims.bold(r.name) for r in runs)
    assert claims.mark_defs == () and claims.legend()[0].startswith("no method marked")
