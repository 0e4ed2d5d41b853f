"""The training loop: reads top to bottom. Batching, schedule, accumulate, clip, step, adapter hooks, evaluate.

The adapter is reached only through its interface (`extra_loss`, `on_step_end`); this file never asks which
method it is running.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from peftbench.adapters.base import Adapter
from peftbench.config import TrainConfig
from peftbench.errors import TrainingDiverged
from peftbench.harness.run.measure import PeakMemory
from peftbench.records import Perf
from peftbench.tasks.base import Features, Scored, TaskSpec

log = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# --- batching --------------------------------------------------------------------------------------------------


def length_grouped_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, group: bool = True, mega: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, cut into mega-batches of `mega` batches, sort each
    by length, slice, then shuffle the batch order. Padding drops to a few tokens per batch."""
    order = rng.permutation(len(lengths))
    if not group:
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    span = batch_size * mega
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span].tolist(), key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def collate(features: Features, idx: list[int], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    cols = features.columns
    width = pad_to or max(len(cols["input_ids"][i]) for i in idx)
    batch: dict[str, torch.Tensor] = {}
    for key in _INPUTS:
        if key not in cols:
            continue
        fill = pad_id if key == "input_ids" else 0
        rows = [cols[key][i] + [fill] * (width - len(cols[key][i])) for i in idx]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    for key, values in cols.items():
        if key in _INPUTS:
            continue
        vals = [values[i] for i in idx]
        batch[key] = torch.tensor(vals, dtype=torch.float32 if isinstance(vals[0], float) else torch.long)
    return batch


def plan_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps the run will take: known before the model is built (AdaLoRA's schedule needs it)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.floor(per_epoch * cfg.epochs / cfg.grad_accum))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- evaluation ------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: nn.Module, features: Features, batch_size: int, pad_id: int, device: torch.device, autocast
) -> dict[str, list[np.ndarray]]:
    """Model outputs per feature, in feature order, trimmed to each feature's own length where per-token."""
    was_training = model.training
    model.eval()
    lengths = [len(x) for x in features.columns["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    outputs: dict[str, list[np.ndarray | None]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(features, idx, pad_id).items() if k in _INPUTS}
        with autocast():
            out = model(**batch)
        for name in ("logits", "start_logits", "end_logits"):
            value = getattr(out, name, None)
            if value is None:
                continue
            arr = value.float().cpu().numpy()
            slot = outputs.setdefault(name, [None] * len(lengths))
            for row, i in enumerate(idx):
                slot[i] = arr[row, : lengths[i]] if arr.ndim == 2 and name != "logits" else arr[row]
    model.train(was_training)
    return outputs  # type: ignore[return-value]


def evaluate(
    task: TaskSpec,
    model: nn.Module,
    eval_sets: dict[str, tuple[Features, list[dict], str]],
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    autocast,
) -> tuple[dict[str, float], dict[str, Scored]]:
    metrics: dict[str, float] = {}
    scored: dict[str, Scored] = {}
    for split, (features, rows, prefix) in eval_sets.items():
        outputs = predict(model, features, cfg.eval_batch_size, pad_id, device, autocast)
        s = task.score(outputs, features, rows)
        scored[split] = s
        metrics.update({f"{prefix}{k}": v for k, v in s.metrics.items()})
    return metrics, scored


# --- training --------------------------------------------------------------------------------------------------


@dataclass
class TrainContext:
    """Everything one run's training needs, built by the runner."""

    task: TaskSpec
    model: nn.Module
    adapter: Adapter
    train_features: Features
    eval_sets: dict[str, tuple[Features, list[dict], str]]
    cfg: TrainConfig
    total_steps: int
    seed: int
    pad_id: int
    accelerator: Any
    progress: bool = True
    # Live curves (trackers.RunTrackers); None or empty: nothing is logged beyond the record.
    trackers: Any = None


@dataclass
class TrainResult:
    metrics: dict[str, float]
    scored: dict[str, Scored]
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    loss_history: list[list[float]] = field(default_factory=list)
    perf: Perf = field(default_factory=Perf)
    steps: int = 0
    optimizer: str = ""


def adamw(param_groups: list, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel wherever torch has one for the parameters' device (CPU and CUDA), else
    its default implementation.

    Why: off CUDA torch's default is a Python loop of about seven element-wise passes per parameter; on CPU
    that loop was a quarter of a full fine-tuning step in bf16 (SST-2 batches, one thread: 448 ms a step, 336 ms
    fused; the loop's `sqrt` alone took 55 ms). The update is AdamW's to the
    last bit or two (rounding order differs), and it is what HF Trainer uses by default since torch 2.8."""
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, ValueError) as e:  # a device or dtype without the kernel
        log.debug("fused AdamW unavailable (%s); using the default implementation", e)
        return torch.optim.AdamW(param_groups, **kwargs)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """How a record names the optimizer that ran, e.g. "AdamW (fused)" (accelerate's fp16 wrapper unwrapped)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    kind = "fused" if inner.defaults.get("fused") else "foreach" if inner.defaults.get("foreach") else "loop"
    return f"{type(inner).__name__} ({kind})"


@dataclass
class Stepper:
    """One optimizer step, the same for a run and for `peftbench perf`: forward and the adapter's extra loss
    under autocast for each micro-batch, backward, clip, optimizer step, the adapter's hook, scheduler, zero_grad.

    The losses it returns stay on the device (sums over micro-batches, not yet divided): reading them is a host
    sync, so the loop reads them only on log steps."""

    model: nn.Module
    adapter: Adapter
    optimizer: torch.optim.Optimizer
    accelerator: Any
    max_grad_norm: float = 1.0
    scheduler: Any = None
    params: list[nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        task_loss = torch.zeros((), device=self.accelerator.device)
        extra_loss = torch.zeros((), device=self.accelerator.device)
        for batch in micro_batches:
            with self.accelerator.autocast():
                loss = self.model(**batch).loss
                extra = self.adapter.extra_loss(self.model)
                total = loss if extra is None else loss + extra
            self.accelerator.backward(total / len(micro_batches))
            task_loss += loss.detach().float()
            if extra is not None:
                extra_loss += extra.detach().float()
        if self.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        # The adapter's hook sees the gradients of this step (AdaLoRA's importance needs them), so it runs
        # after the update and before they are cleared.
        self.adapter.on_step_end(self.model, step)
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return task_loss, extra_loss


def train(ctx: TrainContext) -> TrainResult:
    cfg, model, accelerator, total_steps = ctx.cfg, ctx.model, ctx.accelerator, ctx.total_steps
    device = accelerator.device
    model.to(device)
    model.train()
    # The adapter decides the groups (LoRA+ gives B its own learning rate); every group decays as it says.
    optimizer = adamw(list(ctx.adapter.param_groups(model, cfg.lr, cfg.weight_decay)))
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if accelerator.mixed_precision == "fp16":
        # Only a prepared optimizer gets the loss scaler's unscale, its skip of overflowed steps and its scale update.
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    step_fn = Stepper(model, ctx.adapter, optimizer, accelerator, cfg.max_grad_norm, scheduler)
    rng = np.random.default_rng(ctx.seed)
    lengths = [len(x) for x in ctx.train_features.columns["input_ids"]]
    pad_to = None if cfg.group_by_length else cfg.max_length
    mem = PeakMemory(device)

    def micro_batches():
        # Endless stream of epochs; the step count, not the epoch, ends training.
        while True:
            yield from length_grouped_batches(lengths, cfg.batch_size, rng, cfg.group_by_length)

    stream = micro_batches()
    loss_history: list[list[float]] = []
    eval_history: list[dict[str, Any]] = []
    step_times: list[float] = []
    examples = tokens = 0
    log_every = max(1, total_steps // 200)
    bar = _progress(total_steps, ctx.progress)
    t_start = time.perf_counter()
    # CPU time beside wall time: on a shared machine wall time also counts the waits for a core.
    cpu_start = time.process_time()
    for step in range(total_steps):
        t0 = time.perf_counter()
        batches = []
        for _ in range(cfg.grad_accum):
            idx = next(stream)
            batch = {k: v.to(device) for k, v in collate(ctx.train_features, idx, ctx.pad_id, pad_to).items()}
            examples += len(idx)
            tokens += int(batch["attention_mask"].sum())
            batches.append(batch)
        lr = optimizer.param_groups[0]["lr"]  # this step's: the scheduler moves it on inside step_fn
        task_sum, extra_sum = step_fn(batches, step)
        step_times.append(time.perf_counter() - t0)
        if step % log_every == 0 or step == total_steps - 1:
            # The only host sync of a step, and only on log steps; a NaN is caught here, at most log_every
            # steps after it appeared (the run is failed either way).
            task_loss, extra = task_sum.item() / cfg.grad_accum, extra_sum.item() / cfg.grad_accum
            if not math.isfinite(task_loss) or not math.isfinite(extra):
                raise TrainingDiverged(step, f"loss is {task_loss} (extra loss {extra})")
            loss_history.append([step, round(task_loss, 6), round(extra, 6)])
            if ctx.trackers:
                scalars = {"train/loss": task_loss, "train/extra_loss": extra, "train/lr": lr}
                scalars.update({f"adapter/{k}": float(v) for k, v in ctx.adapter.step_scalars().items()})
                ctx.trackers.log(scalars, step)
            if bar is not None:
                elapsed = time.perf_counter() - t_start
                bar.set_postfix(loss=f"{task_loss:.4f}", samples_s=f"{examples / max(elapsed, 1e-9):.1f}")
        if bar is not None:
            bar.update(1)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < total_steps:
            m, _ = evaluate(ctx.task, model, ctx.eval_sets, cfg, ctx.pad_id, device, accelerator.autocast)
            eval_history.append({"step": step + 1, **m})
            _log_eval(ctx.trackers, m, step + 1)
    train_seconds = time.perf_counter() - t_start
    train_cpu_seconds = time.process_time() - cpu_start
    if bar is not None:
        bar.close()
    metrics, scored = evaluate(ctx.task, model, ctx.eval_sets, cfg, ctx.pad_id, device, accelerator.autocast)
    eval_history.append({"step": total_steps, **metrics})
    _log_eval(ctx.trackers, metrics, total_steps)
    perf = Perf(
        train_seconds=round(train_seconds, 3),
        train_cpu_seconds=round(train_cpu_seconds, 3),
        train_samples_per_second=round(examples / train_seconds, 3),
        train_tokens_per_second=round(tokens / train_seconds, 1),
        step_time_ms_median=round(1000 * float(np.median(step_times)), 3),
        peak_memory_bytes=mem.peak(),
        peak_memory_kind=mem.kind,
        train_examples=examples,
        train_tokens=tokens,
    )
    return TrainResult(metrics, scored, eval_history, loss_history, perf, total_steps, optimizer_name(optimizer))


def _log_eval(trackers, metrics: dict[str, float], step: int) -> None:
    # Steps as in the record: an evaluation after k optimizer steps is at step k, a training step at its index.
    if trackers:
        trackers.log({f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, leave=False)
