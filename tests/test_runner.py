"""The runner end to end on a tiny BERT: every GLUE task with both foundation methods, records, determinism."""

from __future__ import annotations

import json

import pytest

from peftbench import registry
from peftbench.records import load_record
from tests.helpers import quick_run

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
REQUIRED = [
    "schema_version",
    "run_id",
    "status",
    "error",
    "config.task",
    "config.method",
    "config.seed",
    "config.model",
    "config.config_hash",
    "config.budget_requested",
    "data.source",
    "data.hash",
    "data.train_rows",
    "data.eval_rows_per_split",
    "metrics.primary_name",
    "metrics.primary",
    "metrics.all",
    "params.trainable",
    "params.adapter",
    "params.head",
    "params.total",
    "perf.train_seconds",
    "perf.train_samples_per_second",
    "perf.train_tokens_per_second",
    "perf.peak_memory_bytes",
    "perf.step_time_ms_median",
    "env",
]


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        assert part in d, f"record lacks {dotted}"
        d = d[part]
    return d


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("task", GLUE)
def test_every_glue_task_runs(task, method, tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, task=task, method=method)
    assert rec.ok, rec.error
    spec = registry.tasks.get(task)
    raw = json.loads(rec.path.read_text())
    for key in REQUIRED:
        _get(raw, key)
    assert rec.metrics.primary_name == spec.primary_metric
    assert set(rec.metrics.all) >= {spec.primary_metric}
    if task == "mnli":
        assert "mm_accuracy" in rec.metrics.all
    assert rec.config.model.sha256  # local directories are hashed too
    on_disk = load_record(rec.path)
    assert on_disk.ok and on_disk.record == rec
    p = rec.params
    assert p.trainable == p.adapter + p.head
    assert p.head > 0
    if method == "lora":
        assert 0 < p.adapter < p.total / 10
    else:
        assert p.trainable == p.total


def test_same_seed_same_metrics_bit_for_bit(tiny_model_dir, tmp_path):
    a = quick_run(tiny_model_dir, tmp_path / "a", task="mrpc", method="lora", seed=3)
    b = quick_run(tiny_model_dir, tmp_path / "b", task="mrpc", method="lora", seed=3)
    assert a.metrics.all == b.metrics.all
    assert a.train.loss_history == b.train.loss_history
    c = quick_run(tiny_model_dir, tmp_path / "c", task="mrpc", method="lora", seed=4)
    assert c.train.loss_history != a.train.loss_history


def test_record_is_written_atomically_and_predictions_beside_it(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, task="rte", method="lora")
    run_dir = tmp_path / "runs" / "rte" / "lora"
    files = sorted(p.name for p in run_dir.iterdir())
    assert [f for f in files if f.endswith(".tmp")] == []
    preds = (run_dir / files[0]).with_suffix(".preds.jsonl") if files[0].endswith(".json") else None
    assert preds is not None and preds.exists()
    line = json.loads(preds.read_text().splitlines()[0])
    assert len(line["predictions"]) == len(line["references"]) == rec.data.eval_rows


def test_gradient_accumulation_counts_optimizer_steps(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, sets=("grad_accum=2", "batch_size=8"))
    assert rec.ok
    assert rec.train.total_steps == 3
    assert rec.perf.train_examples == 3 * 2 * 8


@pytest.mark.parametrize("task", ["squad", "squad_v2"])
def test_span_tasks_run_end_to_end(task, tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, task=task, method="lora", sets=("max_length=192", "eval_rows=12"))
    assert rec.ok, rec.error
    m = rec.metrics.all
    assert rec.metrics.primary_name == "f1"
    assert {"f1"} <= set(m)
    if task == "squad_v2":
        assert {"HasAns_f1", "NoAns_f1", "best_f1"} <= set(m)
    else:
        assert "exact_match" in m
