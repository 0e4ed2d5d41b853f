"""Pareto and learning-curve figures from hand-made records: valid PNG and SVG files, and the CLI around them."""

from __future__ import annotations

import struct

import pytest

from peftbench.errors import UsageError
from peftbench.harness.cli import main
from peftbench.harness.report.aggregate import runs_frame, summarize
from peftbench.harness.report.plots import plot_curves, plot_pareto
from peftbench.records import iter_records
from tests.helpers import build_record, write_built

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(results, task, method, seed, primary, budget=None, adapter=1000, history=None, status="ok"):
    """A record as the runner writes it, with an evaluation history of {"step", metric} points."""
    rec = build_record(task, method, seed, primary, budget=budget, adapter=adapter, history=history, status=status,
                       requested=1 if budget else None)  # fmt: skip
    write_built(results, rec)
    return rec


def populate(results) -> None:
    budgets = {"0.1M": 100_000, "0.3M": 300_000, "1.2M": 1_200_000}
    for seed in range(3):
        make_record(results, "sst2", "full", seed, 0.90 + 0.01 * seed, adapter=22_000_000)
        for i, (budget, params) in enumerate(budgets.items()):
            for method, offset in (("lora", 0.0), ("dora", 0.01)):
                final = 0.80 + 0.03 * i + offset + 0.005 * seed
                history = [{"step": s, "accuracy": final - 0.1 * (30 - s) / 30} for s in (10, 20, 30)]
                make_record(results, "sst2", method, seed, final, budget, int(params * (1 + offset)), history)
    make_record(results, "sst2", "lora", 9, None, "0.3M", status="failed")  # left out of both figures
    make_record(results, "rte", "lora", 0, 0.6, "0.3M")  # another task: left out


def check_figure(paths) -> None:
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    png, svg = (next(p for p in paths if p.suffix == s) for s in (".png", ".svg"))
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 300
    assert len(data) > 20_000  # lines, markers, labels: not an empty canvas
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_pareto_from_summary_and_from_frame(tmp_path):
    populate(tmp_path)
    frame = runs_frame(tmp_path)
    paths = plot_pareto(summarize(frame), "sst2", tmp_path / "figs" / "pareto.png")
    check_figure(paths)
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    for label in ("lora (n = 3 seeds)", "dora (n = 3 seeds)", "full, 22.00M params (mean ± std)", "Pareto front"):
        assert label in svg
    check_figure(plot_pareto(frame, "sst2", tmp_path / "figs" / "pareto-frame"))


def test_curves_average_seeds_per_step(tmp_path):
    populate(tmp_path)
    records = [r.record for r in iter_records(tmp_path)]
    paths = plot_curves(records, "sst2", tmp_path / "curves.svg")
    check_figure(paths)
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    assert "lora @0.3M (n = 3)" in svg and "full (n = 3)" in svg
    assert "sst2: accuracy during training" in svg


def test_plot_errors(tmp_path):
    populate(tmp_path)
    with pytest.raises(UsageError, match="no successful runs of task 'cola'"):
        plot_pareto(runs_frame(tmp_path), "cola", tmp_path / "x")
    with pytest.raises(UsageError, match="no run of task 'sst2' has 'f1'"):
        plot_curves([r.record for r in iter_records(tmp_path)], "sst2", tmp_path / "x", metric="f1")


def test_plot_cli(tmp_path, capsys):
    populate(tmp_path)
    r = ["--results", str(tmp_path)]
    assert main(["plot", "pareto", "--task", "sst2", "--out", str(tmp_path / "p.png")] + r) == 0
    assert main(["plot", "curves", "--task", "sst2", "--methods", "lora", "--out", str(tmp_path / "c")] + r) == 0
    out = capsys.readouterr().out
    for name in ("p.png", "p.svg", "c.png", "c.svg"):
        assert f"wrote {tmp_path / name}" in out
        assert (tmp_path / name).stat().st_size > 5_000
    assert main(["plot", "pareto", "--task", "cola", "--out", str(tmp_path / "z")] + r) == 2
    assert (
        main(["plot", "curves", "--task", "sst2", "--out", str(tmp_path / "z"), "--results", str(tmp_path / "no")]) == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "z.png").exists()


def test_pareto_draws_the_trivial_baseline_and_the_probe_and_says_what_the_bars_are(tmp_path):
    populate(tmp_path)
    for seed in range(3):
        make_record(tmp_path, "sst2", "head", seed, 0.6 + 0.01 * seed, adapter=0)
    paths = plot_pareto(summarize(runs_frame(tmp_path)), "sst2", tmp_path / "pareto")
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    # write_built stores one example per run (reference 0), so the majority class of the training rows scores it.
    assert "trivial baseline: majority class (1)" in svg
    assert "head: linear probe, the floor (mean ± std)" in svg
    assert "error bars and bands: ± std over seeds" in svg
