"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from peftbench.config import ModelRef, RunConfig, TrainConfig
from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.harness.run.runner import execute
from peftbench.records import (
    DataInfo,
    Params,
    Perf,
    RunRecord,
    atomic_write_text,
    predictions_path,
    record_path,
    write_record,
)

FAST = ("max_steps=3", "train_rows=48", "eval_rows=24", "batch_size=16", "max_length=32", "eval_batch_size=32")


def quick_run(
    model_dir: Path,
    results: Path,
    task: str = "sst2",
    method: str = "lora",
    seed: int = 0,
    sets: tuple[str, ...] = (),
    budget: str | None = None,
    data: str = "sample",
) -> RunRecord:
    cfg = resolve(
        RunRequest(
            task=task, method=method, seed=seed, model=str(model_dir), data=data, budget=budget, sets=FAST + tuple(sets)
        )
    )
    return execute(cfg, results, progress=False)


def build_record(
    task: str,
    method: str,
    seed: int,
    primary: float | None,
    *,
    budget: str | None = None,
    requested: int | None = None,
    status: str = "ok",
    adapter: int = 1000,
    adapter_peak: int | None = None,
    extra_metrics: dict[str, float] | None = None,
    history: list[dict[str, Any]] | None = None,
    primary_name: str = "accuracy",
    profile: str = "quick",
    created: str = "t0",
    lr: float = 1e-3,
    perf: Perf | None = None,
    diagnostics: dict[str, Any] | None = None,
    loss: list[list[float]] | None = None,
    params: Params | None = None,
) -> RunRecord:
    """A record made through the constructors the runner uses (`RunRecord.start`, then `finish` or `fail`).
    `loss`: the loss history ([step, task loss, extra loss] rows); `params` replaces the default counts."""
    cfg = RunConfig(
        task=task,
        method=method,
        seed=seed,
        model=ModelRef("m", "m", "m"),
        data="sample",
        data_hash="d",
        method_config={},
        train=TrainConfig(lr=lr),
        budget=budget,
        budget_requested=requested if requested is not None or not budget else 300_000,
        profile=profile,
    )
    rec = dataclasses.replace(RunRecord.start(cfg, DataInfo("sample", "d", 100, {"validation": 10}), primary_name, 30),
                              created=created)  # fmt: skip
    if status != "ok":
        return rec.fail("boom")
    return rec.finish(
        {primary_name: primary, **(extra_metrics or {})},
        history if history is not None else [{"step": 30, primary_name: primary}],
        params or Params(trainable=adapter + 770, adapter=adapter, head=770, total=10**6, adapter_peak=adapter_peak),
        perf or Perf(train_samples_per_second=100.0, peak_memory_bytes=2**30, step_time_ms_median=5.0),
        loss if loss is not None else [[0, 0.7, 0.0]],
        diagnostics or {},
    )


def write_built(results: Path, rec: RunRecord, preds: list | None = None, refs: list | None = None) -> Path:
    """Write a record as the runner does: its predictions first, then the record."""
    path = record_path(results, rec.config.task, rec.config.method, rec.config_hash)
    if rec.ok:
        preds = [0] if preds is None else list(preds)
        refs = [0] * len(preds) if refs is None else list(refs)
        line = {"split": "validation", "predictions": preds, "references": refs}
        atomic_write_text(predictions_path(path), json.dumps(line) + "\n")
    write_record(path, rec)
    return path
