"""VeRA (Kopiczko et al., ICLR 2024): h = W x + b + Λ_b B Λ_d A x, A and B frozen, random and shared by all layers.

One pair of random matrices serves every adapted Linear; only the scaling vectors d (r entries) and b (d_out
entries) train, per matrix.

Checked against peft 0.21 (`tuners/vera/`):
- A is r × d_in_max and B is d_out_max × r, the largest input and output widths over the adapted Linears; a
  smaller layer uses the leading d_in columns of A and the leading d_out rows of B;
- both come from one torch.Generator seeded with `projection_seed` (peft's projection_prng_key), A drawn first,
  each uniform in ±sqrt(6 / fan_in) with fan_in their second dimension (kaiming-uniform, gain sqrt(2));
- d starts at `d_initial` (0.1) and b at zero, so the update is zero and the model unchanged at initialisation.
Λ_b B and Λ_d A are ordinary r-rank factors, so the layer runs LoRA's fused low-rank GEMM on them
(`lora.low_rank_linear`) and merges like LoRA: W ← W + Λ_b B Λ_d A.

Budget formula: Σ over adapted matrices of (r + d_out). The shared A and B are frozen buffers, not counted (they
are regenerated from the seed). Size knob: r, solved for a budget by `for_budget`."""

from __future__ import annotations

import logging
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
    solve_integer_rank,
)
from peftbench.adapters.lora import AdditiveDelta, can_fuse, low_rank_linear, wrap_targets
from peftbench.errors import UsageError

log = logging.getLogger(__name__)

# VeRA's r has no natural ceiling: the paper itself runs r above the model width (1024 on RoBERTa-base's 768),
# since every extra rank adds a trainable entry of d. The cap only keeps an unreachable budget from becoming an
# r-wide activation per token in every adapted layer; budgets above it fail at planning with the nearest count.
MAX_RANK = 16384


@dataclass(frozen=True)
class VeraConfig:
    r: int = field(default=256, metadata={"help": "rows of the shared random A (columns of B); d has r entries"})
    d_initial: float = field(default=0.1, metadata={"help": "initial value of every entry of the scaling vector d"})
    projection_seed: int = field(default=0, metadata={"help": "seed of the shared random matrices A and B"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})


def shared_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt(2), fan_in = shape[1]) drawn from `generator`, so the matrices follow the seed."""
    bound = math.sqrt(6.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjections(nn.Module):
    """The frozen A (r × d_in) and B (d_out × r) that every VeraLinear of a model holds as the same submodule:
    moving the model moves them once, and a state dict loads them into the one copy."""

    def __init__(self, r: int, d_in: int, d_out: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        # Order matters: A is drawn before B from the one generator, as peft does.
        self.register_buffer("A", shared_uniform((r, d_in), g))
        self.register_buffer("B", shared_uniform((d_out, r), g))

    def extra_repr(self) -> str:
        return f"A={tuple(self.A.shape)}, B={tuple(self.B.shape)}"


class VeraLinear(AdditiveDelta):
    """An nn.Linear plus Λ_b B Λ_d A. Merging is explicit (`merge`/`unmerge`), never tied to .eval()."""

    def __init__(self, base: nn.Linear, shared: VeraProjections, d_initial: float, dropout: float = 0.0) -> None:
        super().__init__()
        r, d_in_max = shared.A.shape
        if base.in_features > d_in_max or base.out_features > shared.B.shape[0]:
            raise UsageError(f"VeRA's shared matrices ({d_in_max} in, {shared.B.shape[0]} out) are smaller than "
                             f"a {base.in_features} -> {base.out_features} Linear")  # fmt: skip
        self.base = base
        self.shared = shared
        self.r = r
        w = base.weight
        self.vera_d = nn.Parameter(torch.full((r,), d_initial, dtype=w.dtype, device=w.device))
        self.vera_b = nn.Parameter(torch.zeros(base.out_features, dtype=w.dtype, device=w.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ_d A, Λ_b B) sliced to this layer's shape: r × d_in and d_out × r, the update is their product."""
        a = self.shared.A[:, : self.base.in_features] * self.vera_d.unsqueeze(1)
        b = self.shared.B[: self.base.out_features] * self.vera_b.unsqueeze(1)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return b @ a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        w, bias = self.base.weight, self.base.bias
        a, b = self.factors()
        if can_fuse(x, w, self.dropout, self.training):
            # As LoraLinear: the training-only GEMM layout follows the wrapped Linear's mode too.
            return low_rank_linear(x, w, bias, a, b, 1.0, training=self.training and self.base.training)
        out = self.base(x)
        xa = F.linear(self.dropout(x), a).reshape(-1, self.r)
        out2 = torch.addmm(out.reshape(-1, out.shape[-1]), xa, b.t())
        return out2.view(out.shape)

    def extra_repr(self) -> str:
        return f"r={self.r}, merged={self.merged}"


class VeraAdapter(Adapter):
    name = "vera"
    layer_cls = VeraLinear
    config_cls = VeraConfig
    budget_knobs = ("r",)
    # Scaling vectors move the update only multiplicatively, and b starts at 0: the paper trains them with
    # learning rates of order 1e-2 on GLUE. Not tuned here.
    default_lr = 4e-3

    def __init__(self, config: VeraConfig) -> None:
        super().__init__(config)
        self.shared: VeraProjections | None = None
        self.n_matrices = 0

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        if c.r < 1:
            raise UsageError(f"VeRA rank must be >= 1, got r={c.r}")
        targets = find_targets(model, plan.targets, plan.head_modules)
        if not targets:
            raise UsageError(f"no nn.Linear in the model matches targets {list(plan.targets)}; check --set targets=...")
        shared = VeraProjections(c.r, max(t.d_in for t in targets), max(t.d_out for t in targets), c.projection_seed)
        w = model.get_submodule(targets[0].name).weight
        shared.to(device=w.device, dtype=w.dtype)
        wrap_targets(model, plan, lambda lin: VeraLinear(lin, shared, c.d_initial, c.dropout))
        self.shared, self.n_matrices = shared, len(targets)
        log.debug("vera: %d matrices share A %s and B %s", len(targets), tuple(shared.A.shape), tuple(shared.B.shape))
        return model

    def diagnostics(self) -> dict:
        if self.shared is None:
            return {}
        return {
            "matrices": self.n_matrices,
            "shared_A": list(self.shared.A.shape),
            "shared_B": list(self.shared.B.shape),
            "projection_seed": self.config.projection_seed,
        }

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: VeraConfig) -> int:
        return sum(config.r + t.d_out for t in targets)

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: VeraConfig) -> BudgetSolution:
        # Each rank costs one entry of d per matrix; the b vectors cost d_out per matrix whatever the rank.
        fixed = sum(t.d_out for t in targets)
        r, achieved = solve_integer_rank(cls.name, budget, len(targets), fixed, MAX_RANK)
        return BudgetSolution(config_replace(base, r=r), achieved, f"r={r}")
