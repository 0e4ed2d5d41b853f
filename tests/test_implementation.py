"""Whose code ran a row (native or peft): recorded in the run record, read back (older records as native), and
shown by the leaderboard only where a table holds a non-native row."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from peftbench.harness.report.aggregate import runs_frame, summarize
from peftbench.harness.report.leaderboard import render
from peftbench.records import load_record
from tests.helpers import build_record, write_built


def _write(results, method: str, seed: int, primary: float, implementation: str = "native"):
    rec = build_record("sst2", method, seed, primary, budget="0.3M")
    rec = dataclasses.replace(rec, implementation=implementation)
    return write_built(results, rec, preds=[1, 0, 1, 1], refs=[1, 0, 1, 0])


def test_implementation_round_trips_and_old_records_read_as_native(tmp_path):
    path = _write(tmp_path, "peft-lora", 0, 0.8, "peft")
    assert json.loads(path.read_text())["implementation"] == "peft"
    assert load_record(path).record.implementation == "peft"
    raw = json.loads(path.read_text())
    del raw["implementation"]
    path.write_text(json.dumps(raw))
    assert load_record(path).record.implementation == "native"


def test_tables_mark_the_implementation_only_when_a_row_is_not_native(tmp_path):
    native_only = tmp_path / "a"
    for seed in (0, 1):
        _write(native_only, "lora", seed, 0.8)
    assert "implementation" not in render(summarize(runs_frame(native_only)))
    assert "implementation" not in render(summarize(runs_frame(native_only)), "csv")

    mixed = tmp_path / "b"
    for seed in (0, 1):
        _write(mixed, "lora", seed, 0.8)
        _write(mixed, "peft-lora", seed, 0.75, "peft")
    md = render(summarize(runs_frame(mixed)))
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert header.startswith("| method | implementation | budget |")
    assert "| lora | native | 0.3M |" in md and "| peft-lora | peft | 0.3M |" in md
    assert "| trivial: majority class (1) | - | - |" in md
    assert "- implementation: whose layers ran the method" in md
    rows = list(csv.DictReader(io.StringIO(render(summarize(runs_frame(mixed)), "csv"))))
    assert {r["method"]: r["implementation"] for r in rows} == {"lora": "native", "peft-lora": "peft"}
    for fmt in ("latex", "html"):
        assert "implementation" in render(summarize(runs_frame(mixed)), fmt)
