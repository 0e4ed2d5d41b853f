"""One run, start to finish: data, model, adapter, training, measurement, record."""

from __future__ import annotations

import json
import logging
import os
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench import registry
from peftbench.adapters.base import ApplyPlan
from peftbench.config import RunConfig, to_jsonable
from peftbench.errors import TrainingDiverged, UsageError
from peftbench.harness.run.data import featurize_cached, load_rows
from peftbench.harness.run.measure import environment
from peftbench.harness.run.plan import method_config_of
from peftbench.harness.run.train import plan_steps, train
from peftbench.records import (
    SCHEMA_VERSION,
    adapter_weights_path,
    atomic_write_text,
    predictions_path,
    record_path,
    write_record,
)

log = logging.getLogger(__name__)


def _feature_key(cfg: RunConfig, split: str, n_rows: int, train_split: bool) -> dict[str, Any]:
    return {
        "task": cfg.task,
        "version": cfg.task_version,
        "data": cfg.data_hash,
        "split": split,
        "rows": n_rows,
        "model": cfg.model.sha256 or cfg.model.model_id,
        "revision": cfg.model.revision,
        "max_length": cfg.train.max_length,
        "train": train_split,
    }


def _seed_everything(seed: int) -> None:
    import transformers

    transformers.set_seed(seed)


def _accelerator(precision: str):
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    bf16 = precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")


def execute(cfg: RunConfig, results: Path, progress: bool = True, save_adapter: bool = False) -> dict[str, Any]:
    """Train and evaluate one config, write its record atomically and return it. With `save_adapter`, the
    trained parameters (adapter and head) go beside the record as `<hash>.adapter.safetensors`.

    Bad input raises UsageError before anything is written. A failure during training (divergence, a bug in a
    plugin, out of memory) is written as a failed record and re-raised as the record."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    task = registry.tasks.get(cfg.task)
    adapter_cls = registry.adapters.get(cfg.method)
    method_cfg = method_config_of(cfg)
    path = record_path(results, cfg.task, cfg.method, cfg.config_hash)
    t = cfg.train

    train_rows = load_rows(task, cfg.data, task.train_split, t.train_rows)
    eval_rows = {e.split: (load_rows(task, cfg.data, e.split, t.eval_rows), e.prefix) for e in task.eval_splits}
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, revision=cfg.model.revision)
    train_feats = featurize_cached(
        task, train_rows, tokenizer, _feature_key(cfg, task.train_split, len(train_rows), True), t.max_length, True
    )
    eval_sets = {
        split: (
            featurize_cached(task, rows, tokenizer, _feature_key(cfg, split, len(rows), False), t.max_length, False),
            rows,
            prefix,
        )
        for split, (rows, prefix) in eval_rows.items()
    }
    total_steps = plan_steps(len(train_feats), t)
    plan = ApplyPlan(total_steps=total_steps, targets=t.targets)
    adapter_cls.check_plan(method_cfg, plan)

    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{cfg.task}-{cfg.method}-{cfg.config_hash}",
        "status": "failed",
        "error": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": _config_section(cfg, len(train_rows), {s: len(r) for s, (r, _) in eval_rows.items()}),
        "metrics": {"primary_name": task.primary_metric, "primary": None, "all": {}, "history": []},
        "params": {},
        "budget": {"requested": cfg.budget_requested, "achieved": None},
        "perf": {},
        "diagnostics": {},
        "train": {"total_steps": total_steps, "loss_history": []},
        "env": {},
    }
    adapter = None
    try:
        _seed_everything(cfg.seed)
        accelerator = _accelerator(t.precision)
        record["env"] = environment(accelerator.device)
        model = task.model_class().from_pretrained(cfg.model.path, revision=cfg.model.revision, **task.model_kwargs())
        adapter = adapter_cls(method_cfg)
        model = adapter.apply(model, plan)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        log.debug("%s: training starts, %d steps", record["run_id"], total_steps)
        result = train(
            task, model, adapter, train_feats, eval_sets, t, total_steps, cfg.seed, pad_id, accelerator, progress
        )
        report = adapter.param_report(model)
        record["params"] = to_jsonable(report)
        record["budget"]["achieved"] = report.adapter
        record["metrics"].update(
            primary=result.metrics[task.primary_metric], all=result.metrics, history=result.eval_history
        )
        record["perf"] = result.perf
        record["train"]["loss_history"] = result.loss_history
        record["diagnostics"] = adapter.diagnostics()
        if save_adapter:
            record["adapter_file"] = _save_trainable(model, adapter_weights_path(path), cfg).name
        record["status"] = "ok"
        _write_predictions(path, result.scored)
    except TrainingDiverged as e:
        record["error"] = str(e)
        record["diagnostics"] = {"diverged_at_step": e.step, "reason": e.reason}
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:  # a plugin bug or out-of-memory: recorded, so the sweep goes on
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=8)
        if adapter is not None:
            try:
                record["diagnostics"] = adapter.diagnostics()
            except Exception:  # noqa: BLE001 - diagnostics of a broken adapter are best effort
                pass
    torch_threads = torch.get_num_threads()
    record["env"].setdefault("torch_threads", torch_threads)
    write_record(path, record)
    record["_path"] = str(path)
    return record


def _config_section(cfg: RunConfig, n_train: int, n_eval: dict[str, int]) -> dict[str, Any]:
    d = to_jsonable(cfg)
    d["config_hash"] = cfg.config_hash
    d["model"] = {
        "name": cfg.model.name,
        "id": cfg.model.model_id,
        "revision": cfg.model.revision,
        "sha256": cfg.model.sha256,
    }
    d["data"] = {
        "source": cfg.data,
        "hash": cfg.data_hash,
        "train_rows": n_train,
        "eval_rows": sum(n_eval.values()),
        "eval_rows_per_split": n_eval,
    }
    d["budget"] = {"requested": cfg.budget_requested, "spec": cfg.budget}
    d.pop("data_hash", None)
    d.pop("budget_requested", None)
    d["_resolved"] = to_jsonable(cfg)  # the exact config, so a record can be rerun as it was
    return d


def _save_trainable(model, target: Path, cfg: RunConfig) -> Path:
    """The parameters training changed, in safetensors (no pickle: loading it cannot run code), atomically."""
    from safetensors.torch import save_file

    # Copies: safetensors refuses tensors that share storage, and the file must not alias live weights.
    state = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = {"config_hash": cfg.config_hash, "task": cfg.task, "method": cfg.method, "format": "peftbench-trainable"}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _write_predictions(record_file: Path, scored) -> None:
    lines = [
        json.dumps({"split": split, "predictions": s.predictions, "references": s.references})
        for split, s in scored.items()
    ]
    atomic_write_text(predictions_path(record_file), "\n".join(lines) + "\n")
