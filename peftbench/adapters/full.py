"""Full fine-tuning: every weight trains. The unbudgeted reference row of every comparison."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftbench.adapters.base import Adapter, ApplyPlan


@dataclass(frozen=True)
class FullConfig:
    pass


class FullAdapter(Adapter):
    name = "full"
    display_name = "full FT"
    config_cls = FullConfig
    default_lr = 5e-5
    # BERT's fine-tuning grid (Devlin et al. 2019, A.3: 2e-5..5e-5) shifted up for a 6-layer model trained a
    # few hundred steps; MiniLM's own GLUE runs used up to 1e-4.
    tune_grid = {"lr": (5e-5, 1e-4, 2e-4)}
    budgeted = False
    trains_base = True

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
