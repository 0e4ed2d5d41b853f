"""LoRA (Hu et al., 2021): h = W x + b + s * B A dropout(x), with B = 0 at init so the model is unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapters.base import (
    Adapter,
    ApplyPlan,
    BudgetSolution,
    TargetMatrix,
    config_replace,
    find_targets,
    freeze_all_but_head,
    set_submodule,
    solve_integer_rank,
)
from peftbench.errors import UsageError


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata={"help": "rank of the update B A"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator: s = alpha / r (or alpha / sqrt(r))"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})


def lora_scaling(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraLinear(nn.Module):
    """An nn.Linear plus a low-rank update. Merging is explicit (`merge`/`unmerge`), never tied to .eval()."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        super().__init__()
        if r < 1:
            raise UsageError(f"LoRA rank must be >= 1, got r={r}")
        self.base = base
        self.r = r
        self.scaling = lora_scaling(alpha, r, rslora)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        # Same init as peft's lora_A (an nn.Linear default: kaiming-uniform, a = sqrt(5)).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.lora_out(x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def wrap_targets(model: nn.Module, plan: ApplyPlan, make) -> list[TargetMatrix]:
    """Freeze everything but the head, then replace each target Linear with `make(linear)`."""
    freeze_all_but_head(model, plan.head_modules)
    targets = find_targets(model, plan.targets, plan.head_modules)
    if not targets:
        raise UsageError(f"no nn.Linear in the model matches targets {list(plan.targets)}; check --set targets=...")
    for t in targets:
        set_submodule(model, t.name, make(model.get_submodule(t.name)))
    return targets


def max_rank(targets: list[TargetMatrix]) -> int:
    return min(min(t.d_in, t.d_out) for t in targets)


class LoraAdapter(Adapter):
    name = "lora"
    config_cls = LoraConfig
    default_lr = 1e-3

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        wrap_targets(model, plan, lambda lin: LoraLinear(lin, c.r, c.alpha, c.dropout, c.rslora))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.merge()
        return model

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: LoraConfig) -> int:
        return sum(config.r * (t.d_in + t.d_out) for t in targets)

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: LoraConfig) -> BudgetSolution:
        per_rank = sum(t.d_in + t.d_out for t in targets)
        r, achieved = solve_integer_rank(cls.name, budget, per_rank, 0, max_rank(targets))
        # Keep alpha/r constant when the rank moves, so the update's scale does not depend on the budget.
        alpha = base.alpha * r / base.r if not base.rslora else base.alpha
        return BudgetSolution(config_replace(base, r=r, alpha=alpha), achieved, f"r={r}")
