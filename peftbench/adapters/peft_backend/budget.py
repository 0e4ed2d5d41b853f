"""Budgets against peft's own parameter count: peft builds its layers on a skeleton that holds only the target
Linears (on the meta device: no weights, no arithmetic), we count what it made trainable, and a search over the
method's size knob finds the value whose count is nearest the request.

Why count peft's layers instead of writing each method's formula down: the formulas of peft's newer tuners (LoKr's
factorisation, OFT's block-size adjustment, shared banks) live in its code and move between versions; counting
what it builds cannot drift from what it trains."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from peftbench.adapters.base import BudgetSolution, TargetMatrix, fmt_count
from peftbench.errors import BudgetError

log = logging.getLogger(__name__)

# Steps of a schedule a count is taken under (AdaLoRA validates its schedule against a run length; the count does
# not depend on it): long enough for any schedule given as step counts.
COUNT_STEPS = 1_000_000


def skeleton(targets: Sequence[TargetMatrix], device: str = "meta") -> nn.Module:
    """A module tree with an nn.Linear (d_in -> d_out) at each target's path and nothing else."""
    root = nn.Module()
    with torch.device(device):
        for t in targets:
            parent = root
            *path, leaf = t.name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, nn.Linear(t.d_in, t.d_out))
    root.requires_grad_(False)
    return root


@functools.lru_cache(maxsize=1024)
def peft_count(cls: type, targets: tuple[TargetMatrix, ...], config) -> int:
    """Trainable parameters peft creates for `config` on these targets (the head is not in the skeleton).

    Where each layer's adapter depends only on its own shape (`cls.count_by_shape`), one Linear per distinct shape
    is built and its count multiplied: a handful of layers instead of every block's. Only parameters under the
    tuner's prefix count: on the meta device peft 0.21 leaves AdaLoRA's `ranknum` (a constant) marked trainable,
    which it is not on a real model."""
    if not cls.count_by_shape:
        return _count(cls, targets, config)
    shapes: dict[tuple[int, int], int] = {}
    for t in targets:
        shapes[t.d_in, t.d_out] = shapes.get((t.d_in, t.d_out), 0) + 1
    one_each = tuple(TargetMatrix(f"shape{i}", d_in, d_out) for i, (d_in, d_out) in enumerate(shapes))
    per_layer = _count(cls, one_each, config, per_module=True)
    return sum(per_layer[t.name] * n for t, n in zip(one_each, shapes.values(), strict=True))


def _count(cls: type, targets: tuple[TargetMatrix, ...], config, per_module: bool = False):
    model = skeleton(targets, cls.count_device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # block-size adjustments and the like, once per layer: the count says it
        tuner = cls.build_tuner(model, [t.name for t in targets], config, COUNT_STEPS)
    counted = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad and tuner.prefix in n]
    if not per_module:
        return sum(k for _, k in counted)
    return {t.name: sum(k for n, k in counted if n.startswith(t.name + ".")) for t in targets}


def search_knob(
    method: str, knob: str, values: Sequence[int], count: Callable[[int], int], budget: int
) -> tuple[int, int, tuple[int, int]]:
    """The knob value whose count is nearest `budget`, its count, and the counts of the two adjacent values that
    bracket the request. `values` ascend and so, mostly, do their counts: an interpolation search with a bisection
    fallback needs a handful of counts; where counts are not monotone it still ends on an adjacent pair whose counts
    straddle the request. Out of range: the end value when within the tolerance native ranks get (half the smallest
    count, 1.5x the largest), else a BudgetError with the nearest achievable count."""
    lo, hi = 0, len(values) - 1
    c_lo, c_hi = count(values[lo]), count(values[hi])
    if budget <= c_lo or budget >= c_hi:
        low_side = budget <= c_lo
        end, c_end = (lo, c_lo) if low_side else (hi, c_hi)
        if budget <= 0 or (low_side and budget < c_lo // 2) or (not low_side and budget > c_hi * 3 // 2):
            raise BudgetError(
                f"{method} cannot reach a budget of {fmt_count(budget)} on these targets ({knob}={values[lo]} gives "
                f"{fmt_count(c_lo)}, {knob}={values[hi]} gives {fmt_count(c_hi)}); nearest achievable: "
                f"{fmt_count(c_end)}"
            )
        return values[end], c_end, (c_end, c_end)
    bisect = False
    while hi - lo > 1:
        if bisect:
            mid = (lo + hi) // 2
        else:
            mid = lo + round((budget - c_lo) / (c_hi - c_lo) * (hi - lo))
            mid = min(max(mid, lo + 1), hi - 1)
        width = hi - lo
        c = count(values[mid])
        if c == budget:
            return values[mid], c, (c, c)
        if c < budget:
            lo, c_lo = mid, c
        else:
            hi, c_hi = mid, c
        # Interpolation crawls when counts curve (or jump); bisect whenever it did not halve the bracket.
        bisect = not bisect and (hi - lo) * 2 > width
    best, c_best = (lo, c_lo) if budget - c_lo <= c_hi - budget else (hi, c_hi)
    return values[best], c_best, (c_lo, c_hi)


def solve(cls: type, targets: list[TargetMatrix], budget: int, base) -> BudgetSolution:
    """for_budget of a peft method: search its knob against peft's count on these targets."""
    frozen = tuple(targets)
    values = cls.knob_values(targets, base)

    def count(v: int) -> int:
        return cls.adapter_count(frozen, cls.with_knob(base, v, targets))

    value, achieved, around = search_knob(cls.name, cls.budget_knobs[0], values, count, budget)
    config = cls.with_knob(base, value, targets)
    log.debug("%s: %s=%s gives %d for a budget of %d (neighbours %s)", cls.name, cls.budget_knobs[0], value,
              achieved, budget, around)  # fmt: skip
    return BudgetSolution(config, achieved, f"{cls.budget_knobs[0]}={value}", around)
