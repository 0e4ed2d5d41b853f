"""AdaLoRA as peft builds it: peft's SVD layers and RankAllocator, on the runner's hooks.

- The allocator: `update_and_allocate(step)` from `on_step_end`, after the optimizer step and before the gradients
  are cleared, with `step` the 0-based index of the step just taken (peft's global_step), as native adalora.
- The schedule: peft needs `total_step` up front; it comes from the plan, with t_init, t_final and delta_t given
  as fractions of the run or step counts and checked as native adalora checks them.
- The orthogonal regulariser: peft adds it to `outputs.loss` inside its model's forward. Here peft's forward never
  runs (the runner calls the transformers model) and peft's `orth_reg_weight` is 0 besides, so it is not counted
  twice: `extra_loss` returns γ·R over peft's own A and B, which the runner adds and logs as the extra loss, as for
  native adalora. R is peft's (the mean over every A and B of ‖C − I‖_F, not squared).

Budget: the final triplet budget is target_r per matrix (peft's b(T)); its size knob is target_r, counted by peft
as the parameters of target_r triplets per matrix, Σ target_r·(d_in + d_out + 1). With a budget, init_r follows
as init_ratio × target_r (the paper's 1.5, as native adalora's init_budget_ratio). The count reported at the end
is the retained triplets' (peft's final rank pattern), as native adalora reports it; the initial count is the peak."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from peftbench.adapters.adalora import MAX_CURVE_POINTS, AdaLoraAdapter, rank_grid
from peftbench.adapters.adalora.config import _check_step_value, resolve_schedule
from peftbench.adapters.adalora.layer import orth_penalty
from peftbench.adapters.base import ApplyPlan, ParamReport, TargetMatrix, config_replace, find_targets
from peftbench.adapters.lora import max_rank
from peftbench.adapters.peft_backend.adapter import ADAPTER_NAME, PeftAdapter
from peftbench.adapters.peft_backend.budget import peft_count
from peftbench.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeftAdaLoraConfig:
    init_r: int = field(default=12, metadata={"help": "initial rank of every adapted matrix (with a budget: derived)"})
    target_r: int = field(default=8, metadata={"help": "mean final rank per matrix: b(T) = target_r x matrices"})
    init_ratio: float = field(
        default=1.5, metadata={"help": "with a budget, init_r = ceil(init_ratio x target_r) (the paper's 1.5)"}
    )
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator: s = alpha / init_r (native's default)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    orth_reg_weight: float = field(
        default=0.1, metadata={"help": "gamma of the orthogonal regulariser, returned by extra_loss (native's 0.1)"}
    )
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the sensitivity"})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of the uncertainty"})
    t_init: int | float = field(default=0.1, metadata={"help": "warm-up: a fraction of the run (< 1) or steps"})
    t_final: int | float = field(default=0.2, metadata={"help": "final phase: a fraction of the run or steps"})
    delta_t: int | float = field(default=10, metadata={"help": "steps between re-allocations (fraction or count)"})

    def __post_init__(self) -> None:
        if not 1 <= self.target_r <= self.init_r:
            raise UsageError(f"peft-adalora needs 1 <= target_r <= init_r, got target_r={self.target_r}, "
                             f"init_r={self.init_r}")  # fmt: skip
        if self.init_ratio < 1 or self.orth_reg_weight < 0:
            raise UsageError("peft-adalora needs init_ratio >= 1 and orth_reg_weight >= 0")
        for name in ("t_init", "t_final", "delta_t"):
            _check_step_value(name, getattr(self, name))


class _Factors(NamedTuple):
    """peft's A and B of one layer under the names native adalora's regulariser reads (P = B, Q = A)."""

    P: torch.Tensor
    Q: torch.Tensor


class PeftAdaLoraAdapter(PeftAdapter):
    name = "peft-adalora"
    display_name = "AdaLoRA (peft)"
    summary = "AdaLoRA as peft builds it (peft.AdaLoraConfig and its RankAllocator)"
    config_cls = PeftAdaLoraConfig
    peft_config_name = "AdaLoraConfig"
    budget_knobs = ("target_r", "init_r")
    default_lr = AdaLoraAdapter.default_lr

    def __init__(self, config: PeftAdaLoraConfig) -> None:
        super().__init__(config)
        self.targets: list[TargetMatrix] = []
        self._budget_curve: list[list[int]] = []
        self._stride = 1

    @classmethod
    def check_plan(cls, config: PeftAdaLoraConfig, plan: ApplyPlan) -> None:
        resolve_schedule(config, plan.total_steps)

    @classmethod
    def peft_kwargs(cls, config: PeftAdaLoraConfig, names: list[str], total_steps: int) -> dict[str, Any]:
        s = resolve_schedule(config, total_steps)
        return {
            "init_r": config.init_r, "target_r": config.target_r, "lora_alpha": config.alpha,
            "lora_dropout": config.dropout, "beta1": config.beta1, "beta2": config.beta2, "tinit": s.t_init,
            "tfinal": s.t_final, "deltaT": s.delta_t, "total_step": total_steps,
            # Added by extra_loss instead (see the module docstring); peft's forward would add it a second time.
            "orth_reg_weight": 0.0,
        }  # fmt: skip

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        # Shapes first: once peft has wrapped them, the targets are no longer nn.Linear.
        self.targets = find_targets(model, plan.targets, plan.head_modules)
        self._stride = max(1, math.ceil(plan.total_steps / MAX_CURVE_POINTS))
        return super().apply(model, plan)

    def _layers(self) -> dict[str, nn.Module]:
        return {t.name: self.tuner.model.get_submodule(t.name) for t in self.targets} if self.tuner else {}

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.tuner is None or self.config.orth_reg_weight == 0:
            return None
        factors = [_Factors(m.lora_B[ADAPTER_NAME], m.lora_A[ADAPTER_NAME]) for m in self._layers().values()]
        return self.config.orth_reg_weight * orth_penalty(factors)  # type: ignore[arg-type]

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.tuner is None:
            raise UsageError("peft-adalora's on_step_end was called before apply()")
        self.tuner.update_and_allocate(step)
        total = self.tuner.peft_config[ADAPTER_NAME].total_step
        if step % self._stride == 0 or step == total - 1:
            # peft's b(t) in triplets (its schedule is a pure function of the step), for the report's schedule plot.
            self._budget_curve.append([step, int(self.tuner.rankallocator.budget_schedule(step)[0])])

    def final_ranks(self) -> dict[str, int]:
        """Retained triplets per matrix: peft's rank pattern once it has one, else every initial triplet."""
        pattern = self.tuner.peft_config[ADAPTER_NAME].rank_pattern if self.tuner else None
        ranks = {}
        for name, m in self._layers().items():
            kept = (pattern or {}).get(f"{name}.lora_E.{ADAPTER_NAME}")
            ranks[name] = int(sum(kept)) if kept is not None else int(m.r[ADAPTER_NAME])
        return ranks

    def param_report(self, model: nn.Module) -> ParamReport:
        base = super().param_report(model)
        if not self.targets:
            return base
        ranks = self.final_ranks()
        cost = {t.name: t.d_in + t.d_out + 1 for t in self.targets}
        peak = base.trainable - base.head
        return ParamReport(trainable=base.trainable, adapter=sum(ranks[n] * cost[n] for n in ranks), head=base.head,
                           total=base.total, adapter_peak=peak)  # fmt: skip

    def diagnostics(self) -> dict:
        if self.tuner is None:
            return {}
        final = self.final_ranks()
        init = {name: int(m.r[ADAPTER_NAME]) for name, m in self._layers().items()}
        c = self.tuner.peft_config[ADAPTER_NAME]
        return {
            **super().diagnostics(),
            "init_ranks": init,
            "final_ranks": final,
            "rank_grid": rank_grid(self.targets, final),
            "budget_curve": list(self._budget_curve),
            "orth_reg_weight": self.config.orth_reg_weight,
            "schedule": {
                "total_steps": c.total_step,
                "t_init": c.tinit,
                "t_final": c.tfinal,
                "delta_t": c.deltaT,
                "final_step": c.total_step - c.tfinal,
            },  # fmt: skip
        }

    # --- counting: final = target_r triplets per matrix, peak = init_r -------------------------------------

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: PeftAdaLoraConfig) -> int:
        # peft's count of target_r triplets per matrix: what b(T) retains when the pruning spreads it evenly.
        at_target = config_replace(config, init_r=config.target_r)
        return peft_count(cls, tuple(targets), at_target)

    @classmethod
    def peak_adapter_count(cls, targets: list[TargetMatrix], config: PeftAdaLoraConfig) -> int | None:
        return peft_count(cls, tuple(targets), config)

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: PeftAdaLoraConfig) -> Sequence[int]:
        return range(1, max_rank(targets) + 1)

    @classmethod
    def with_knob(cls, base: PeftAdaLoraConfig, value: int, targets: list[TargetMatrix]) -> PeftAdaLoraConfig:
        init_r = min(max(value, math.ceil(base.init_ratio * value - 1e-9)), max_rank(targets))
        return config_replace(base, target_r=value, init_r=init_r)
