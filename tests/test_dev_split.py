"""The dev split `peftbench tune` chooses settings on: carved out of the training rows by content, never
touching a validation row, the same on every call, and invisible to the config hash when off."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from peftbench import registry
from peftbench.harness.run.data import dev_split, load_rows, train_and_eval_rows, validation_keys
from peftbench.harness.run.plan import RunRequest, count_train_rows, resolve
from peftbench.records import load_record
from tests.helpers import quick_run

TASKS = sorted(registry.tasks.names())


def _keys(task, rows) -> set[str]:
    return {task.dev_key(r) for r in rows}


@pytest.mark.parametrize("name", TASKS)
def test_dev_rows_are_disjoint_from_validation_and_training_by_content(name):
    task = registry.tasks.get(name)
    rows = load_rows(task, "sample", task.train_split)
    rest, dev = dev_split(task, rows, 300, validation_keys(task, "sample"))
    assert len(dev) >= 300 and len(rest) + len(dev) == len(rows)
    assert not _keys(task, dev) & _keys(task, rest)
    for e in task.eval_splits:
        validation = load_rows(task, "sample", e.split)
        assert not _keys(task, dev) & _keys(task, validation), f"{name}: a dev row is also in {e.split}"
        # The text itself, not only the key: a validation sentence must never be scored as dev.
        texts = {json.dumps([r.get(f) for f in task.text_fields]) for r in validation}
        assert not {json.dumps([r.get(f) for f in task.text_fields]) for r in dev} & texts


def test_dev_split_is_deterministic_and_keeps_file_order():
    task = registry.tasks.get("rte")
    rows = load_rows(task, "sample", "train")
    a = dev_split(task, rows, 200)
    b = dev_split(task, list(rows), 200)
    assert a == b
    positions = {id(r): i for i, r in enumerate(rows)}
    for part in a:
        idx = [positions[id(r)] for r in part]
        assert idx == sorted(idx)


def test_rows_with_the_same_content_stay_together():
    task = registry.tasks.get("sst2")
    rows = [{"sentence": f"s{i % 40}", "label": i % 2, "idx": i} for i in range(200)]
    rest, dev = dev_split(task, rows, 7)
    assert not _keys(task, dev) & _keys(task, rest)
    assert len(dev) % 5 == 0  # each distinct sentence occurs 5 times, all on one side


def test_squad_holds_out_whole_paragraphs():
    task = registry.tasks.get("squad")
    rows = load_rows(task, "sample", "train")
    rest, dev = dev_split(task, rows, 150)
    assert {r["context"] for r in dev}.isdisjoint({r["context"] for r in rest})


def test_too_many_dev_rows_is_a_one_line_error():
    task = registry.tasks.get("wnli")
    rows = load_rows(task, "sample", "train")
    with pytest.raises(Exception, match="dev_rows=10000 leaves no training rows"):
        dev_split(task, rows, 10_000)


def test_with_dev_rows_the_run_evaluates_on_dev_only():
    task = registry.tasks.get("mnli")
    train, evals = train_and_eval_rows(task, "sample", 100, 50, 120)
    assert list(evals) == ["dev"] and len(evals["dev"][0]) == 50 and len(train) == 100
    n_dev = len(dev_split(task, load_rows(task, "sample", "train"), 120, validation_keys(task, "sample"))[1])
    assert count_train_rows(task, "sample", 0, 120) == 3000 - n_dev


def test_a_tiny_run_on_dev(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, sets=("dev_rows=40",))
    assert rec.status == "ok"
    assert set(rec.data.eval_rows_per_split) == {"dev"}
    assert rec.config.train.dev_rows == 40


def test_dev_rows_off_leaves_committed_hashes_unchanged():
    files = sorted(glob.glob("results/leaderboards/*/runs/*/*/*.json"))
    assert files, "the committed leaderboard records are missing"
    for f in files[:10]:
        loaded = load_record(Path(f))
        assert loaded.record is not None, loaded.problem
        assert loaded.record.config.train.dev_rows == 0
        # The file is named by the hash it was written under; the config read back must hash the same today.
        assert loaded.record.config.config_hash == Path(f).stem


def test_dev_rows_changes_the_hash(tiny_model_dir):
    base = RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=("max_steps=2",))
    with_dev = RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=("max_steps=2", "dev_rows=50"))
    assert resolve(base).config_hash != resolve(with_dev).config_hash
