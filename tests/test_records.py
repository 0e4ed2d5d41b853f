"""The typed run record: built by the runner's constructors, round-tripped through its file, and version-1 files
(written by earlier peftbench releases) still loaded, aggregated and rendered to the committed expected tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftbench.harness.cli import main
from peftbench.records import SCHEMA_VERSION, iter_records, load_record, record_path, write_record
from tests.helpers import build_record, quick_run, write_built

FIXTURE = Path(__file__).parent / "fixtures" / "v1_results"


def test_a_record_round_trips_through_its_file(tmp_path):
    rec = build_record("sst2", "lora", 2, 0.81, budget="0.3M", adapter_peak=1500, extra_metrics={"f1": 0.7})
    path = write_built(tmp_path, rec)
    loaded = load_record(path)
    assert loaded.ok and loaded.record == rec
    assert loaded.record.config == rec.config and loaded.record.config_hash == path.stem
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2
    assert "_resolved" not in raw["config"]  # the config is stored once


def test_version_1_records_load_into_the_same_config_and_hash():
    loaded = [r for r in iter_records(FIXTURE)]
    assert len(loaded) == 12 and all(r.ok for r in loaded)
    for r in loaded:
        raw = json.loads(r.path.read_text())
        assert raw["schema_version"] == 1
        # load -> the exact config it ran -> the hash its file is named by
        assert r.record.config_hash == raw["config"]["config_hash"] == r.path.stem
        assert r.record.metrics.primary == raw["metrics"]["primary"]
        assert r.record.params.adapter == raw["params"]["adapter"]
        assert r.record.data.train_rows == raw["config"]["data"]["train_rows"]


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_version_1_results_render_the_same_leaderboard_bytes(fmt, tmp_path):
    """The expected files are the honest-tables rendering (trivial baseline rows, not-learned marks, top groups,
    legends) of these records; the version-1 records must keep loading and rendering to them byte for byte."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURE / "runs", results / "runs")
    out = tmp_path / f"leaderboard.{fmt}"
    assert main(["leaderboard", "--results", str(results), "--format", fmt, "--out", str(out)]) == 0
    assert out.read_bytes() == (FIXTURE / f"leaderboard.{fmt}").read_bytes()


def test_a_version_1_record_rewritten_as_version_2_reads_back_equal(tmp_path):
    [first] = [r for r in iter_records(FIXTURE) if r.record.config.method == "adalora"][:1]
    target = record_path(tmp_path, first.record.config.task, "adalora", first.record.config_hash)
    write_record(target, first.record)
    again = load_record(target).record
    assert again == first.record and again.diagnostics == first.record.diagnostics


def test_a_failed_predictions_write_leaves_a_failed_record(tiny_model_dir, tmp_path, monkeypatch):
    """The record says ok only once everything it points to is written (it used to say ok with an error)."""
    from peftbench.harness.run import runner

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "_write_predictions", disk_full)
    rec = quick_run(tiny_model_dir, tmp_path)
    assert rec.status == "failed" and "No space left" in rec.error
    on_disk = load_record(rec.path)
    assert on_disk.record is not None and not on_disk.ok
