"""Linear probe: the encoder stays frozen and only the task head trains.

The floor every parameter-efficient method has to beat: whatever a method gains over this row comes from what it
changes inside the encoder. Unbudgeted, like full fine-tuning, and its adapter count is 0 by construction
(the head is trained by every method and reported apart from the budget).

Budget formula: 0 adapter parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftbench.adapters.base import Adapter, ApplyPlan, TargetMatrix, freeze_all_but_head


@dataclass(frozen=True)
class HeadConfig:
    pass


class HeadAdapter(Adapter):
    name = "head"
    config_cls = HeadConfig
    # The head starts from scratch on a frozen encoder; the same step size as the adapters' heads get.
    default_lr = 1e-3
    # A linear probe on frozen features takes far larger steps than fine-tuning (its loss is convex).
    # 1e-1: 5e-2, the old top, won on the standard profile's QQP, STS-B, MNLI and MRPC dev splits.
    tune_grid = {"lr": (1e-3, 1e-2, 5e-2, 1e-1, 2e-1)}
    budgeted = False
    is_probe = True

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        freeze_all_but_head(model, plan.head_modules)
        return model

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: HeadConfig) -> int:
        return 0
