"""One run, start to finish: data, model, adapter, training, measurement, record."""

from __future__ import annotations

import dataclasses
import json
import logging
import traceback
from pathlib import Path
from typing import Any

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, head_in_float32, store_frozen_as
from peftbench.config import RunConfig
from peftbench.errors import TrainingDiverged, UsageError
from peftbench.harness.run.data import featurize_cached, train_and_eval_rows
from peftbench.harness.run.devices import make_accelerator, parse_device
from peftbench.harness.run.export import save_adapter as save_adapter_files
from peftbench.harness.run.measure import environment
from peftbench.harness.run.plan import method_config_of
from peftbench.harness.run.precision import PrecisionChoice, choose_precision
from peftbench.harness.run.trackers import open_trackers
from peftbench.harness.run.train import TrainContext, plan_steps, train
from peftbench.records import (
    DataInfo,
    Params,
    RunRecord,
    atomic_write_text,
    predictions_path,
    record_path,
    tracker_dir,
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
        # The same row count can hold other rows once a dev split is carved out.
        "dev_rows": cfg.train.dev_rows,
    }


def _seed_everything(seed: int) -> None:
    import transformers

    transformers.set_seed(seed)


def _precision(requested: str, device) -> PrecisionChoice:
    """The run's precision and why. The plan has already turned `auto` into what auto picks on this machine;
    the record keeps auto's reason when that is what ran."""
    choice = choose_precision(requested, device)
    auto = choose_precision("auto", device)
    return auto if auto.precision == choice.precision and requested != "auto" else choice


def execute(
    cfg: RunConfig,
    results: Path,
    progress: bool = True,
    save_adapter: bool = False,
    device: str = "auto",
    log_to: tuple[str, ...] = (),
) -> RunRecord:
    """Train and evaluate one config, write its record atomically and return it. With `save_adapter`, the
    trained adapter and head go beside the record: `<hash>.adapter/` in peft's format for the methods peft loads
    (LoRA, DoRA, AdaLoRA), else `<hash>.adapter.safetensors` (see harness.run.export); with `log_to`
    (trackers.TRACKERS), live curves go beside it too, in `<hash>.<tracker>/`.

    Bad input raises UsageError before anything is written. A failure during training (divergence, a bug in a
    plugin, out of memory) is written as a failed record and returned. The record says ok only once the files
    it points to (predictions, adapter weights) are written."""
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

    train_rows, eval_rows = train_and_eval_rows(task, cfg.data, t.train_rows, t.eval_rows, t.dev_rows)
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
    dev = parse_device(device)
    precision = _precision(t.precision, dev)

    data = DataInfo(cfg.data, cfg.data_hash, len(train_rows), {s: len(r) for s, (r, _) in eval_rows.items()})
    record = RunRecord.start(cfg, data, task.primary_metric, total_steps, adapter_cls.implementation)
    env: dict = {}
    adapter = None
    trackers = None
    try:
        _seed_everything(cfg.seed)
        accelerator = make_accelerator(dev, precision)
        env = {
            **environment(accelerator.device),
            "precision": precision.precision,
            "precision_reason": precision.reason,
        }
        model = task.model_class().from_pretrained(cfg.model.path, revision=cfg.model.revision, **task.model_kwargs())
        adapter = adapter_cls(method_cfg)
        model = adapter.apply(model, plan)
        if precision.precision != "fp32":
            # Frozen weights once in the autocast dtype, not cast again at every step; trainable ones stay fp32.
            store_frozen_as(model, torch.bfloat16 if precision.precision == "bf16" else torch.float16)
            head_in_float32(model, plan.head_modules)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        trackers = open_trackers(log_to, {name: tracker_dir(path, name) for name in log_to})
        log.debug("%s: training starts, %d steps", record.run_id, total_steps)
        result = train(
            TrainContext(
                task, model, adapter, train_feats, eval_sets, t, total_steps, cfg.seed, pad_id, accelerator, progress,
                trackers,
            )
        )  # fmt: skip
        env["optimizer"] = result.optimizer
        params = Params(**dataclasses.asdict(adapter.param_report(model)))
        adapter_file = save_adapter_files(adapter, model, path, cfg).name if save_adapter else None
        _write_predictions(path, result.scored)
        record = record.finish(
            result.metrics, result.eval_history, params, result.perf, result.loss_history, adapter.diagnostics(),
            adapter_file,
        )  # fmt: skip
    except TrainingDiverged as e:
        record = record.fail(str(e), diagnostics={"diverged_at_step": e.step, "reason": e.reason})
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:  # a plugin bug, out-of-memory, a full disk: recorded, so the sweep goes on
        diagnostics = None
        if adapter is not None:
            try:
                diagnostics = adapter.diagnostics()
            except Exception:  # noqa: BLE001 - diagnostics of a broken adapter are best effort
                pass
        record = record.fail(f"{type(e).__name__}: {e}", traceback.format_exc(limit=8), diagnostics)
    finally:
        if trackers is not None:
            trackers.close()
    env.setdefault("torch_threads", torch.get_num_threads())
    record = dataclasses.replace(record, env=env)
    write_record(path, record)
    return dataclasses.replace(record, path=path)


def _write_predictions(record_file: Path, scored) -> None:
    lines = [
        json.dumps({"split": split, "predictions": s.predictions, "references": s.references})
        for split, s in scored.items()
    ]
    atomic_write_text(predictions_path(record_file), "\n".join(lines) + "\n")
