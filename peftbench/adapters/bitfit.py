"""BitFit (Ben Zaken et al., ACL 2022): only bias terms train, the weights stay frozen.

The biases are those of the target Linear layers (the same `targets` every method adapts), and with
`layernorm=true` also the LayerNorm biases inside the transformer blocks (their scales stay frozen). Nothing is
wrapped: the model's own bias tensors train in place, so the model is unchanged at initialisation and there is
nothing to merge. The paper trains every bias of the encoder; restricting it to the shared targets keeps BitFit
comparable with the other methods' rows.

Budget formula (unbudgeted: no size knob): sum of d_out over the targeted Linears that have a bias, plus, with
`layernorm=true`, the width of every LayerNorm inside the blocks (two per BERT layer)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from peftbench.adapters.base import (
    Adapter,
    ApplyPlan,
    block_index,
    find_targets,
    freeze_all_but_head,
    is_head_param,
)
from peftbench.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BitFitConfig:
    layernorm: bool = field(
        default=False, metadata={"help": "also train the LayerNorm biases inside the transformer blocks"}
    )


def block_layernorms(model: nn.Module, head_modules: tuple[str, ...]) -> list[tuple[str, nn.LayerNorm]]:
    """LayerNorms inside numbered blocks (the embeddings' LayerNorm is outside them, as the pooler is)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) and not is_head_param(name, head_modules) and block_index(name) is not None
    ]


class BitFitAdapter(Adapter):
    name = "bitfit"
    config_cls = BitFitConfig
    # Biases are few and start at their pre-trained values; the paper's BERT runs sweep 1e-4 to 1e-3.
    default_lr = 1e-3
    budgeted = False

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        freeze_all_but_head(model, plan.head_modules)
        targets = find_targets(model, plan.targets, plan.head_modules)
        biases = [model.get_submodule(t.name).bias for t in targets]
        if self.config.layernorm:
            biases += [ln.bias for _, ln in block_layernorms(model, plan.head_modules)]
        biases = [b for b in biases if b is not None]
        if not biases:
            raise UsageError(
                f"no bias among the Linears matching targets {list(plan.targets)}; bitfit has nothing to train"
            )
        for b in biases:
            b.requires_grad_(True)
        log.debug("bitfit: %d bias vectors train (layernorm=%s)", len(biases), self.config.layernorm)
        return model
