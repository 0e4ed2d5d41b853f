"""`peftbench perf`, part one: training steps of every method side by side, in one process.

Each method gets its own copy of the model and optimizer. Its first two steps (a fresh optimizer) are taken
under memory accounting; after the warm-up, rounds run every method once on the same batch, the order rotated
each round, so background load falls on all methods alike and ratios are taken within a round.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, count_params, find_targets, head_in_float32, store_frozen_as
from peftbench.config import DEFAULT_TARGETS
from peftbench.harness.perf.profile import PeakAllocated
from peftbench.harness.run.train import Stepper, adamw

log = logging.getLogger(__name__)

# The schedule every method is built for, and the step the timed steps start from: past t_init = 0.1 x 1000, so a
# method with a schedule (AdaLoRA) is in its budget-decay phase (importance update every step, a re-allocation
# every delta_t steps), as in the middle of a real run. Methods without one ignore both.
TOTAL_STEPS = 1000
FIRST_STEP = 101


@dataclass
class MethodRun:
    """One row of the step benchmark: a model, its optimizer and how one training step is taken."""

    name: str  # "floor", a registry name, or "peft <name>"
    method: str  # the registry name ("floor" for the frozen-model floor)
    impl: str  # "floor", "native", "peft"
    model: nn.Module
    step_fn: Callable[[dict[str, torch.Tensor], int], None]
    own_bytes: int
    adapter_flops_per_token: int = 0  # forward FLOPs of the adapter branches, per token
    trains_base: bool = False  # the encoder's own weights get gradients (full fine-tuning)
    steps_taken: int = FIRST_STEP  # across shapes, so a method's hook sees a run's step counter move on
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_bytes: int | None = None


def storage_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage once (tied weights are shared)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def peft_target_regex(model: nn.Module, targets: tuple[str, ...]) -> str:
    """The exact module names we adapt, as one regex for peft's target_modules (fullmatch)."""
    names = [t.name for t in find_targets(model, targets)]
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def _adapter_flops(model: nn.Module, targets: tuple[str, ...], rank: int) -> int:
    return sum(2 * rank * (t.d_in + t.d_out) for t in find_targets(model, targets))


# --- the methods ----------------------------------------------------------------------------------------------


class _PeftHooks:
    """peft's side of the step: its regulariser is inside the model's forward, its allocator a step hook."""

    def __init__(self, on_step_end) -> None:
        self._on_step_end = on_step_end

    def extra_loss(self, model: nn.Module) -> None:
        return None

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self._on_step_end is not None:
            self._on_step_end(model, step)


def _step(model: nn.Module, hooks, lr: float, accelerator) -> Callable[[dict[str, torch.Tensor], int], None]:
    """The harness's own training step (run.train.Stepper) on one batch."""
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=lr)
    stepper = Stepper(model, hooks, opt, accelerator, max_grad_norm=1.0)
    return lambda batch, i: stepper([batch], i)


def _floor_step(model, accelerator):
    embed = model.get_input_embeddings()

    # What any adapter on every layer must at least pay: the same forward, and a backward carrying input
    # gradients through every layer, with no weight gradient and no optimizer.
    def step(batch: dict[str, torch.Tensor], i: int) -> None:
        emb = embed(batch["input_ids"]).detach().requires_grad_(True)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        with accelerator.autocast():
            out = model(inputs_embeds=emb, **rest)
        out.loss.backward()

    return step


def build_methods(
    base: nn.Module, methods: list[str], with_peft: bool, device: torch.device, accelerator, frozen_dtype=None
) -> list[MethodRun]:
    """The floor, each method as built by its adapter, and (with_peft) each method's peft twin where it has one.
    With `frozen_dtype` (bf16 runs) every model's frozen weights are stored in it, as the runner stores them."""

    def stored(model: nn.Module) -> nn.Module:
        if frozen_dtype is not None:
            store_frozen_as(model, frozen_dtype)
            head_in_float32(model)
        return model

    runs: list[MethodRun] = []
    floor = copy.deepcopy(base).to(device).train()
    floor.requires_grad_(False)
    stored(floor)
    runs.append(MethodRun("floor", "floor", "floor", floor, _floor_step(floor, accelerator), storage_bytes(floor)))
    plan = ApplyPlan(total_steps=TOTAL_STEPS, targets=DEFAULT_TARGETS)
    target = peft_target_regex(base, DEFAULT_TARGETS)
    twins: list[MethodRun] = []  # after the native rows, as the tables list them
    for name in methods:
        cls = registry.adapters.get(name)
        config = cls.config_cls()
        adapter = cls(config)
        model = stored(adapter.apply(copy.deepcopy(base), plan).to(device).train())
        report = count_params(model)
        # Full fine-tuning trains the encoder: its Linear layers pay weight gradients, not adapter branches.
        trains_base = report.adapter > report.total // 2
        # Each adapter parameter takes part in one multiply-add per token in forward (LoRA: r (d_in + d_out)).
        flops = 0 if trains_base else 2 * report.adapter
        step = _step(model, adapter, cls.default_lr, accelerator)
        runs.append(MethodRun(name, name, cls.implementation, model, step, storage_bytes(model), flops, trains_base))
        twin = cls.peft_twin(config, target, "SEQ_CLS", TOTAL_STEPS) if with_peft else None
        if twin is not None:
            import peft

            pmodel = stored(peft.get_peft_model(copy.deepcopy(base), twin.config).to(device).train())
            step = _step(pmodel, _PeftHooks(twin.on_step_end), cls.default_lr, accelerator)
            twins.append(MethodRun(f"peft {name}", name, "peft", pmodel, step, storage_bytes(pmodel), flops))
    return runs + twins


# --- timing ---------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: MethodRun, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[float, float]:
    _sync(device)
    w0, c0 = time.perf_counter(), time.thread_time()
    run.step_fn(batch, run.steps_taken)
    _sync(device)
    run.steps_taken += 1
    return time.perf_counter() - w0, time.thread_time() - c0


def run_shape(
    runs: list[MethodRun], batches: list[dict[str, torch.Tensor]], warmup: int, device: torch.device, memory: bool
) -> None:
    """Warm-up (with `memory`, the first two steps under one memory account: the optimizer state that step one
    creates is live during step two), then one round per timed batch."""
    for run in runs:
        run.wall, run.cpu = [], []
        measured = min(2, warmup) if memory else 0
        with PeakAllocated(device) if measured else contextlib.nullcontext() as acc:
            for i in range(measured):
                run.step_fn(batches[i], run.steps_taken)
                run.steps_taken += 1
        if measured and acc.peak is not None:
            run.peak_bytes = run.own_bytes + acc.peak
        for i in range(measured, warmup):
            run.step_fn(batches[i], run.steps_taken)
            run.steps_taken += 1
    timed_batches = batches[warmup:]
    for r, batch in enumerate(timed_batches):
        k = r % len(runs)
        for run in runs[k:] + runs[:k]:
            w, c = timed(run, batch, device)
            run.wall.append(w)
            run.cpu.append(c)
        log.debug("round %d/%d done", r + 1, len(timed_batches))


# --- batches --------------------------------------------------------------------------------------------------


def fixed_batches(n: int, batch: int, length: int, vocab: int, num_labels: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, vocab, (batch, length), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, num_labels, (batch,), generator=g),
            }
        )
    return [{k: v.to(device) for k, v in b.items()} for b in out]


def glue_batches(task_name: str, tokenizer, n: int, batch: int, max_length: int, device, seed: int = 0):
    """The first n length-grouped batches of an epoch over the bundled sample, as the harness builds them."""
    from peftbench.harness.run.data import load_rows
    from peftbench.harness.run.train import collate, length_grouped_batches

    task = registry.tasks.get(task_name)
    feats = task.featurize(load_rows(task, "sample", task.train_split), tokenizer, max_length, True)
    lengths = [len(x) for x in feats.columns["input_ids"]]
    order = length_grouped_batches(lengths, batch, np.random.default_rng(seed))
    pad = tokenizer.pad_token_id or 0
    chosen = [order[i % len(order)] for i in range(n)]
    return [{k: v.to(device) for k, v in collate(feats, idx, pad).items()} for idx in chosen]


# --- FLOPs and summaries --------------------------------------------------------------------------------------


def forward_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(frozen-able Linear FLOPs, attention FLOPs) of one forward over the padded batch: 2 d_in d_out per token
    for every Linear inside the numbered blocks, 2 d_in d_out per sequence for the rest (pooler, head), and
    4 L d per token per layer for Q K^T and A V."""
    bsz, length = batch["input_ids"].shape
    tokens = bsz * length
    linear = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            per = 2 * m.in_features * m.out_features
            linear += per * (tokens if re.search(r"\.\d+\.", name) else bsz)
    cfg = model.config
    attention = 4 * length * cfg.hidden_size * tokens * cfg.num_hidden_layers
    return linear, attention


def train_flops(run: MethodRun, linear: int, attention: int, tokens: int) -> int:
    """Forward + backward FLOPs of one step: Linear layers 3x forward when their weights train (full), else 2x
    (input gradients only); attention 3x; adapter branches 3x."""
    k = 3 if run.trains_base else 2
    return k * linear + 3 * attention + 3 * run.adapter_flops_per_token * tokens


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def round_ratios(a: list[float], b: list[float]) -> list[float]:
    """a / b per round, each round's pair taken under the same background load."""
    return [x / y for x, y in zip(a, b, strict=False) if y > 0]


def round_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b."""
    pairs = round_ratios(a, b)
    return statistics.median(pairs) if pairs else float("nan")


def summarize(runs: list[MethodRun], batches, timer: str, peak_flops: float | None, base: nn.Module) -> dict[str, Any]:
    """Per-method medians and ratios for one shape."""
    floor = next(r for r in runs if r.impl == "floor")
    full = next((r for r in runs if r.trains_base), None)
    timed_batches = batches[-len(floor.wall) :] if floor.wall else []
    real_tokens = [int(b["attention_mask"].sum()) for b in timed_batches]
    padded = [b["input_ids"].numel() for b in timed_batches]
    shapes = [forward_flops(base, b) for b in timed_batches]
    rows = []
    for run in runs:
        series = run.cpu if timer == "cpu" else run.wall
        peft_twin = next((r for r in runs if r.impl == "peft" and r.method == run.method), None)
        row: dict[str, Any] = {
            "method": run.name,
            "impl": run.impl,
            "family": run.method,
            "floor_limit": registry.adapters.get(run.method).perf_floor_limit if run.impl == "native" else None,
            "reference": run.impl == "native" and registry.adapters.get(run.method).is_reference,
            "trains_base": run.trains_base,
            "display": registry.adapters.get(run.method).display_name or run.method if run.impl != "floor" else "",
            "wall_ms": 1000 * median(run.wall),
            "cpu_ms": 1000 * median(run.cpu),
            "x_floor": round_ratio(series, floor.cpu if timer == "cpu" else floor.wall),
            "x_floor_rounds": round_ratios(series, floor.cpu if timer == "cpu" else floor.wall),
            "wall_s": list(run.wall),
            "cpu_s": list(run.cpu),
            "x_peft": None,
            "x_full": None,
            "tokens_per_s": median([t / w for t, w in zip(real_tokens, run.wall, strict=False)]),
            "peak_bytes": run.peak_bytes,
            "mfu": None,
        }
        if run.impl == "native" and peft_twin is not None:
            row["x_peft"] = round_ratio(series, peft_twin.cpu if timer == "cpu" else peft_twin.wall)
            row["x_peft_rounds"] = round_ratios(series, peft_twin.cpu if timer == "cpu" else peft_twin.wall)
        if full is not None and run is not full:
            row["x_full"] = round_ratio(series, full.cpu if timer == "cpu" else full.wall)
        if peak_flops:
            flops = [train_flops(run, lin, att, n) for (lin, att), n in zip(shapes, padded, strict=False)]
            row["mfu"] = median([f / w / peak_flops for f, w in zip(flops, run.wall, strict=False)])
        rows.append(row)
    return {
        "rows": rows,
        "rounds": len(floor.wall),
        "mean_real_tokens": float(np.mean(real_tokens)) if real_tokens else 0.0,
        "mean_padded_tokens": float(np.mean(padded)) if padded else 0.0,
    }
