"""(IA)³ (Liu et al., NeurIPS 2022): learned vectors that rescale the keys, the values and the feed-forward
activation; h_k = l_k ⊙ (W_k x + b_k), h_v = l_v ⊙ (W_v x + b_v), FFN out = W_o (l_ff ⊙ a) + b_o, every l at ones so
the model is unchanged at initialisation.

Which Linears: among the shared `targets`, those whose path inside the block is listed in `scale_outputs` (keys and
values: `attention.self.key`, `attention.self.value`) or `scale_inputs` (`output.dense`, whose input is the FFN
activation). Matching is on the whole path inside the block, not on a suffix: peft 0.21's BERT defaults
(targets key, value, output.dense; feed-forward output.dense) match by suffix, so they also rescale the input of
`attention.output.dense`, which is not in the paper; `--set scale_inputs=output.dense,attention.output.dense`
reproduces that. The layer computes what peft's IA3 Linear does (output times l, or input times l).
Merging folds l into W (rows, and the bias, for an output scale; columns for an input scale).

Budget formula (unbudgeted: no size knob): Σ d_out over the output-scaled Linears + Σ d_in over the input-scaled
ones; on BERT 2·hidden + intermediate per layer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from peftbench.adapters.base import Adapter, ApplyPlan, find_targets, freeze_all_but_head, set_submodule
from peftbench.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IA3Config:
    scale_outputs: tuple[str, ...] = field(
        default=("attention.self.key", "attention.self.value"),
        metadata={"help": "Linears (path inside a block) whose output is rescaled: keys and values"},
    )
    scale_inputs: tuple[str, ...] = field(
        default=("output.dense",),
        metadata={"help": "Linears (path inside a block) whose input is rescaled: the FFN activation"},
    )


class IA3Linear(nn.Module):
    """An nn.Linear whose output (or input) is multiplied by a learned vector. Merging is explicit."""

    def __init__(self, base: nn.Linear, on_input: bool) -> None:
        super().__init__()
        self.base = base
        self.on_input = on_input
        w = base.weight
        width = base.in_features if on_input else base.out_features
        self.ia3_scale = nn.Parameter(torch.ones(width, dtype=w.dtype, device=w.device))
        self.merged = False
        # The vector as it was folded in: unmerge divides by it even if ia3_scale moved since.
        self._merge_scale: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        # Elementwise on the activations, not folded into W per step: folding would make l's gradient a full
        # d_out x d_in weight gradient instead of a sum over tokens.
        if self.on_input:
            return self.base(x * self.ia3_scale)
        return self.base(x) * self.ia3_scale

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        s = self.ia3_scale.detach().clone()
        w, bias = self.base.weight, self.base.bias
        if self.on_input:
            w.mul_(s.to(w.dtype).unsqueeze(0))
        else:
            w.mul_(s.to(w.dtype).unsqueeze(1))
            if bias is not None:
                bias.mul_(s.to(bias.dtype))
        self._merge_scale = s
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        s = self._merge_scale
        if bool((s == 0).any()):
            raise UsageError("cannot unmerge (IA)³: a scale of 0 was merged, the weights it multiplied are gone")
        w, bias = self.base.weight, self.base.bias
        if self.on_input:
            w.div_(s.to(w.dtype).unsqueeze(0))
        else:
            w.div_(s.to(w.dtype).unsqueeze(1))
            if bias is not None:
                bias.div_(s.to(bias.dtype))
        self._merge_scale = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"scales={'input' if self.on_input else 'output'}, merged={self.merged}"


class IA3Adapter(Adapter):
    name = "ia3"
    layer_cls = IA3Linear
    config_cls = IA3Config
    # The vectors start at 1 and act multiplicatively, so they need larger steps than LoRA's factors; the paper's
    # T-Few recipe uses 3e-3. Not tuned here.
    default_lr = 3e-3
    budgeted = False

    def __init__(self, config: IA3Config) -> None:
        super().__init__(config)
        # Module path -> (path inside its block, layer).
        self.layers: dict[str, tuple[str, IA3Linear]] = {}

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        both = set(c.scale_outputs) & set(c.scale_inputs)
        if both:
            raise UsageError(f"(IA)³ scales a Linear's input or its output, not both: {sorted(both)} is in both lists")
        freeze_all_but_head(model, plan.head_modules)
        found = [t for t in find_targets(model, plan.targets, plan.head_modules) if t.kind in (*c.scale_outputs,
                 *c.scale_inputs)]  # fmt: skip
        if not found:
            raise UsageError(
                f"no Linear among targets {list(plan.targets)} is one of {[*c.scale_outputs, *c.scale_inputs]} "
                "(paths inside a block); check --set scale_outputs=... / scale_inputs=..."
            )
        for t in found:
            layer = IA3Linear(model.get_submodule(t.name), on_input=t.kind in c.scale_inputs)
            set_submodule(model, t.name, layer)
            self.layers[t.name] = (t.kind, layer)
        log.debug("ia3: %d Linears rescaled", len(found))
        return model

    def diagnostics(self) -> dict:
        """Mean |l - 1| per kind of Linear: how far training moved the rescaling away from the identity."""
        moved: dict[str, list[float]] = {}
        for kind, layer in self.layers.values():
            moved.setdefault(kind, []).append(float((layer.ia3_scale.detach() - 1).abs().mean()))
        return {"mean_abs_shift": {k: sum(v) / len(v) for k, v in moved.items()}} if moved else {}
