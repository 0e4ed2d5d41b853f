"""`peftbench perf`, part two: whole runs on the SST-2 sample. Length grouping against padding to 128, the
harness against a bare loop doing the same steps, and peftbench against HF Trainer + peft on the same work."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, head_in_float32, store_frozen_as
from peftbench.config import DEFAULT_TARGETS, ModelRef
from peftbench.errors import UsageError
from peftbench.harness.run.data import load_rows

log = logging.getLogger(__name__)

TASK = "sst2"


@dataclass(frozen=True)
class E2EConfig:
    """The shared recipe: LoRA r=8 (alpha 16) on peftbench's default targets, one epoch, batch 32."""

    rows: int = field(metadata={"help": "SST-2 training rows (the harness's fixed subset of the sample)"})
    eval_rows: int = field(metadata={"help": "validation rows scored (872: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the model head, dropout and batch order"})
    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch"})
    max_length: int = field(default=128, metadata={"help": "tokens per example at most"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear warm-up, as a fraction of the steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})

    method: str = field(default="", metadata={"help": "the method (default: the reference method, LoRA)"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 | fp16: the same for every peer"})

    def __post_init__(self) -> None:
        if not self.method:
            object.__setattr__(self, "method", reference_method())

    @property
    def lr(self) -> float:
        return registry.adapters.get(self.method).default_lr

    def sets(self, **extra: Any) -> tuple[str, ...]:
        base = {
            "train_rows": self.rows,
            "eval_rows": self.eval_rows,
            "epochs": 1.0,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "max_length": self.max_length,
            "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm,
            "lr": self.lr,
            "precision": self.precision,
        }
        base.update(extra)
        return tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in base.items())


@contextmanager
def _stopwatch():
    """Wall seconds ("s") and this process's CPU seconds ("cpu"): the runs here follow one another, so only
    CPU time is safe from load that comes and goes between them."""
    box = {}
    t0, c0 = time.perf_counter(), time.process_time()
    yield box
    box["s"], box["cpu"] = time.perf_counter() - t0, time.process_time() - c0


@contextmanager
def _fresh_caches(tmp: Path):
    """Each harness run pays its own setup: model hash and feature tokenisation (lru and disk caches)."""
    import os

    from peftbench.harness.run import plan

    plan._cached_model.cache_clear()
    plan.model_shape.cache_clear()
    before = os.environ.get("PEFTBENCH_CACHE")
    os.environ["PEFTBENCH_CACHE"] = str(tmp / f"cache-{time.monotonic_ns()}")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PEFTBENCH_CACHE", None)
        else:
            os.environ["PEFTBENCH_CACHE"] = before


def harness_run(model: str, cfg: E2EConfig, tmp: Path, **extra: Any) -> dict[str, Any]:
    """One run through the sweep path (plan, skip check, inline executor, record), timed from the request."""
    from peftbench.harness.sweep.driver import expand, plan, run_sweep
    from peftbench.records import load_record

    results = tmp / f"results-{time.monotonic_ns()}"
    with _fresh_caches(tmp), _stopwatch() as wall:
        requests = expand([TASK], [cfg.method], [], [cfg.seed], model=model, data="sample", sets=cfg.sets(**extra))
        planned = plan(requests, results)
        outcome = run_sweep(planned, results, executor="inline", progress=False)
    loaded = load_record(planned[0].record)
    if outcome.failed or not loaded.ok:
        raise RuntimeError(f"perf: the harness run failed: {outcome.failed or loaded.problem}")
    rec = loaded.record
    return {
        "wall_s": wall["s"],
        "cpu_s": wall["cpu"],
        "train_s": rec.perf.train_seconds,
        "train_cpu_s": rec.perf.train_cpu_seconds,
        "steps": rec.train.total_steps,
        "train_tokens": rec.perf.train_tokens,
        "accuracy": rec.metrics.primary,
    }


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def reference_method() -> str:
    """The method every other is compared with (Adapter.is_reference; LoRA among the built-ins)."""
    found = [n for n in registry.adapters.names() if registry.adapters.get(n).is_reference]
    if not found:
        raise UsageError("no registered method is marked as the reference (Adapter.is_reference)")
    return found[0]


# --- the bare loop ------------------------------------------------------------------------------------------


def _read_rows(split: str, limit: int) -> list[dict]:
    # The harness's own fixed subset, so the bare loop and Trainer see the rows a run sees.
    return load_rows(registry.tasks.get(TASK), "sample", split, limit)


def _pad(seqs: list[list[int]], fill: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [fill] * (width - len(s)) for s in seqs])


def bare_loop(model_ref: ModelRef, cfg: E2EConfig, device: torch.device, autocast) -> dict[str, Any]:
    """What a user writes by hand for the same steps: same rows, tokens, batches, model, LoRA, schedule."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftbench.harness.run.train import adamw, length_grouped_batches, linear_schedule

    with _stopwatch() as wall:
        train_rows, val_rows = _read_rows("train", cfg.rows), _read_rows("validation", cfg.eval_rows)
        tok = AutoTokenizer.from_pretrained(model_ref.path, revision=model_ref.revision)
        enc = tok([r["sentence"] for r in train_rows], truncation=True, max_length=cfg.max_length)
        val = tok([r["sentence"] for r in val_rows], truncation=True, max_length=cfg.max_length)
        labels = [r["label"] for r in train_rows]
        transformers.set_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_ref.path, revision=model_ref.revision, num_labels=2
        )
        steps = math.ceil(len(train_rows) / cfg.batch_size)
        cls = registry.adapters.get(cfg.method)
        model = cls(cls.config_cls()).apply(model, ApplyPlan(steps, DEFAULT_TARGETS)).to(device).train()
        if cfg.precision != "fp32":
            store_frozen_as(model, _DTYPES[cfg.precision])  # as the runner does
            head_in_float32(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = adamw(params, lr=cfg.lr, weight_decay=0.0)  # as the runner builds it
        sched = linear_schedule(opt, int(cfg.warmup_ratio * steps), steps)
        lengths = [len(x) for x in enc["input_ids"]]
        batches = length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(cfg.seed))
        pad = tok.pad_token_id or 0
        with _stopwatch() as train:
            for idx in batches[:steps]:
                batch = {
                    "input_ids": _pad([enc["input_ids"][i] for i in idx], pad),
                    "attention_mask": _pad([enc["attention_mask"][i] for i in idx], 0),
                    "token_type_ids": _pad([enc["token_type_ids"][i] for i in idx], 0),
                    "labels": torch.tensor([labels[i] for i in idx]),
                }
                with autocast():
                    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        model.eval()
        order = sorted(range(len(val_rows)), key=lambda i: len(val["input_ids"][i]))
        correct = 0
        with torch.no_grad():
            for s in range(0, len(order), cfg.eval_batch_size):
                idx = order[s : s + cfg.eval_batch_size]
                batch = {k: _pad([val[k][i] for i in idx], pad if k == "input_ids" else 0).to(device) for k in val}
                with autocast():
                    pred = model(**batch).logits.argmax(-1).cpu()
                correct += sum(int(p) == val_rows[i]["label"] for p, i in zip(pred, idx, strict=True))
    return {
        "wall_s": wall["s"],
        "cpu_s": wall["cpu"],
        "train_s": train["s"],
        "train_cpu_s": train["cpu"],
        "steps": steps,
        "accuracy": correct / len(val_rows),
    }


# --- HF Trainer + peft --------------------------------------------------------------------------------------


def trainer_run(model_ref: ModelRef, cfg: E2EConfig, device: torch.device, tmp: Path) -> dict[str, Any]:
    """The same work as users usually write it: datasets.map tokenisation, dynamic padding per (random) batch,
    Trainer with its defaults for anything the recipe does not set."""
    import datasets
    import peft
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from peftbench.harness.perf.steps import peft_target_regex

    with _stopwatch() as wall:
        tok = AutoTokenizer.from_pretrained(model_ref.path, revision=model_ref.revision)

        def encode(b):
            return tok(b["sentence"], truncation=True, max_length=cfg.max_length)

        train_ds = datasets.Dataset.from_list(_read_rows("train", cfg.rows)).map(encode, batched=True)
        val_rows = _read_rows("validation", cfg.eval_rows)
        val_ds = datasets.Dataset.from_list(val_rows).map(encode, batched=True)
        train_ds, val_ds = (
            d.remove_columns([c for c in ("sentence", "idx") if c in d.column_names]) for d in (train_ds, val_ds)
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            model_ref.path, revision=model_ref.revision, num_labels=2
        )
        cls = registry.adapters.get(cfg.method)
        twin = cls.peft_twin(
            cls.config_cls(), peft_target_regex(model, DEFAULT_TARGETS), "SEQ_CLS", math.ceil(cfg.rows / cfg.batch_size)
        )
        if twin is None:
            raise UsageError(f"perf: method {cfg.method!r} has no peft twin for the Trainer run; use --no-peft")
        model = peft.get_peft_model(model, twin.config)
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"), per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, num_train_epochs=1,
            warmup_steps=cfg.warmup_ratio, weight_decay=0.0, max_grad_norm=cfg.max_grad_norm,
            lr_scheduler_type="linear", logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", seed=cfg.seed, use_cpu=device.type == "cpu", bf16=cfg.precision == "bf16",
            fp16=cfg.precision == "fp16", train_sampling_strategy="group_by_length",
            disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict to stdout
        with _stopwatch() as train:
            out = trainer.train()
        # transformers 5 also length-groups (and shuffles) the *evaluation* batches under group_by_length, and
        # `predict` returns the logits in that order, not the dataset's: scored as is, the peer looked untrained.
        trainer.args.train_sampling_strategy = "random"
        logits = trainer.predict(val_ds).predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        acc = float((np.asarray(logits).argmax(-1) == np.array([r["label"] for r in val_rows])).mean())
    return {
        "wall_s": wall["s"],
        "cpu_s": wall["cpu"],
        "train_s": train["s"],
        "train_cpu_s": train["cpu"],
        "steps": out.global_step,
        "accuracy": acc,
    }


# --- all of part two ----------------------------------------------------------------------------------------


def run_e2e(
    model_name: str,
    model_ref: ModelRef,
    device: torch.device,
    autocast,
    epoch_rows: int,
    e2e_rows: int,
    e2e_batch_size: int,
    eval_rows: int,
    sections: set[str],
    with_peft: bool,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Every peer in `precision`; the Trainer peer as a careful user configures it: length-grouped batches."""
    out: dict[str, Any] = {"precision": precision}
    with tempfile.TemporaryDirectory(prefix="peftbench-perf-") as d:
        tmp = Path(d)
        if "padding" in sections:
            # A small evaluation: only the epoch's training time is compared here.
            pcfg = E2EConfig(rows=epoch_rows, eval_rows=64, precision=precision)
            log.info("perf: SST-2 epoch over %d rows, length-grouped then padded to 128", epoch_rows)
            grouped = harness_run(model_name, pcfg, tmp, group_by_length=True)
            padded = harness_run(model_name, pcfg, tmp, group_by_length=False)
            out["padding"] = {"rows": epoch_rows, "grouped": grouped, "padded": padded}
        cfg = E2EConfig(rows=e2e_rows, eval_rows=eval_rows, batch_size=e2e_batch_size, precision=precision)
        if "harness" in sections or "trainer" in sections:
            # oneDNN builds its kernels per shape on first use (bf16 ones cost the most), and whichever run comes
            # first in this process pays for all of them: measured, the harness run placed first was 12.6% slower
            # than the bare loop after it in bf16 and 3.8% faster in fp32. One unmeasured run first puts every
            # peer on the same footing (each timed run still tokenises and loads from scratch).
            log.info("perf: SST-2 run of %d rows through the sweep path (warm-up, not timed)", e2e_rows)
            harness_run(model_name, cfg, tmp)
            log.info("perf: SST-2 run of %d rows through the sweep path", e2e_rows)
            out["harness"] = harness_run(model_name, cfg, tmp)
            out["config"] = {"rows": e2e_rows, "eval_rows": eval_rows, "lr": cfg.lr, "batch_size": cfg.batch_size}
        if "harness" in sections:
            log.info("perf: the same run as a bare loop")
            out["bare"] = bare_loop(model_ref, cfg, device, autocast)
        if "trainer" in sections and with_peft:
            log.info("perf: the same run through HF Trainer + peft")
            out["trainer"] = trainer_run(model_ref, cfg, device, tmp)
    return out
