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
from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.config import DEFAULT_TARGETS
from peftbench.harness.perf.profile import PeakAllocated

log = logging.getLogger(__name__)

# AdaLoRA's schedule in these steps: long enough that the timed steps sit in the budget-decay phase
# (importance update every step, a re-allocation every delta_t = 10 steps), as in the middle of a real run.
ADALORA_TOTAL_STEPS = 1000
ADALORA_FIRST_STEP = 101  # just past t_init = 0.1 x 1000
PEFT_FAMILIES = ("lora", "dora", "adalora")


@dataclass
class MethodRun:
    """One row of the step benchmark: a model, its optimizer and how one training step is taken."""

    name: str  # "floor", "full", "lora", "peft lora", ...
    family: str  # "floor", "full", "lora", "dora", "adalora"
    impl: str  # "floor", "native", "peft"
    model: nn.Module
    step_fn: Callable[[dict[str, torch.Tensor], int], None]
    own_bytes: int
    adapter_flops_per_token: int = 0  # forward FLOPs of the adapter branches, per token
    steps_taken: int = 0  # across shapes, so AdaLoRA's hook sees a run's step counter move on
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


def _train_step(model, optimizer, autocast, extra_loss=None, hook=None, step_offset: int = 0):
    params = [p for p in model.parameters() if p.requires_grad]

    # The harness's step (train.py): forward, extra loss, backward, clip, optimizer, adapter hook, zero_grad.
    def step(batch: dict[str, torch.Tensor], i: int) -> None:
        with autocast():
            out = model(**batch)
            loss = out.loss
            extra = extra_loss(model) if extra_loss is not None else None
            total = loss if extra is None else loss + extra
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if hook is not None:
            hook(model, step_offset + i)
        optimizer.zero_grad(set_to_none=True)

    return step


def _floor_step(model, autocast):
    embed = model.get_input_embeddings()

    # What any adapter on every layer must at least pay: the same forward, and a backward carrying input
    # gradients through every layer, with no weight gradient and no optimizer.
    def step(batch: dict[str, torch.Tensor], i: int) -> None:
        emb = embed(batch["input_ids"]).detach().requires_grad_(True)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        with autocast():
            out = model(inputs_embeds=emb, **rest)
        out.loss.backward()

    return step


def build_methods(
    base: nn.Module, families: list[str], with_peft: bool, device: torch.device, autocast
) -> list[MethodRun]:
    runs: list[MethodRun] = []
    floor = copy.deepcopy(base).to(device).train()
    floor.requires_grad_(False)
    runs.append(MethodRun("floor", "floor", "floor", floor, _floor_step(floor, autocast), storage_bytes(floor)))
    plan = ApplyPlan(total_steps=ADALORA_TOTAL_STEPS, targets=DEFAULT_TARGETS)
    for fam in families:
        cls = registry.adapters.get(fam)
        config = cls.config_cls()
        adapter = cls(config)
        model = adapter.apply(copy.deepcopy(base), plan).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cls.default_lr)
        offset = ADALORA_FIRST_STEP if fam == "adalora" else 0
        step = _train_step(model, opt, autocast, adapter.extra_loss, adapter.on_step_end, offset)
        rank = getattr(config, "init_r", getattr(config, "r", 0))  # AdaLoRA computes at its initial rank
        runs.append(
            MethodRun(fam, fam, "native", model, step, storage_bytes(model), _adapter_flops(base, plan.targets, rank))
        )
    if with_peft:
        runs.extend(_peft_methods(base, [f for f in families if f in PEFT_FAMILIES], device, autocast))
    return runs


def _peft_methods(base: nn.Module, families: list[str], device: torch.device, autocast) -> list[MethodRun]:
    import peft

    target = peft_target_regex(base, DEFAULT_TARGETS)
    runs = []
    for fam in families:
        if fam == "adalora":
            # Same schedule as ours: t_init 0.1, t_final 0.2 of the run, delta_t 10; the regulariser is added to
            # the loss inside peft's forward, and update_and_allocate is its step hook.
            cfg = peft.AdaLoraConfig(
                init_r=12, target_r=8, lora_alpha=32, lora_dropout=0.0, tinit=100, tfinal=200, deltaT=10,
                total_step=ADALORA_TOTAL_STEPS, orth_reg_weight=0.1, target_modules=target, task_type="SEQ_CLS",
            )  # fmt: skip
        else:
            cfg = peft.LoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.0, use_dora=fam == "dora", target_modules=target,
                task_type="SEQ_CLS",
            )  # fmt: skip
        model = peft.get_peft_model(copy.deepcopy(base), cfg).to(device).train()
        lr = registry.adapters.get(fam).default_lr
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        hook = (lambda m, s: m.base_model.update_and_allocate(s)) if fam == "adalora" else None
        offset = ADALORA_FIRST_STEP if fam == "adalora" else 0
        rank = 12 if fam == "adalora" else 8
        runs.append(
            MethodRun(
                f"peft {fam}", fam, "peft", model, _train_step(model, opt, autocast, None, hook, offset),
                storage_bytes(model), _adapter_flops(base, DEFAULT_TARGETS, rank),
            )
        )  # fmt: skip
    return runs


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
    k = 3 if run.family == "full" else 2
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
    full = next((r for r in runs if r.family == "full"), None)
    timed_batches = batches[-len(floor.wall) :] if floor.wall else []
    real_tokens = [int(b["attention_mask"].sum()) for b in timed_batches]
    padded = [b["input_ids"].numel() for b in timed_batches]
    shapes = [forward_flops(base, b) for b in timed_batches]
    rows = []
    for run in runs:
        series = run.cpu if timer == "cpu" else run.wall
        peft_twin = next((r for r in runs if r.impl == "peft" and r.family == run.family), None)
        row: dict[str, Any] = {
            "method": run.name,
            "impl": run.impl,
            "family": run.family,
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
        if full is not None and run.family != "full":
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
