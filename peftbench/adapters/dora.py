"""DoRA (Liu et al., ICML 2024): W' = m * (W + s B A) / ||W + s B A||, the norm per output row and detached.

The magnitude m (one value per output row) starts at ||W|| and B starts at 0, so the model is unchanged at
initialisation. Checked against peft 0.21 (`tuners/lora/dora.py`, `variants.DoraLinearVariant`); where we differ
it is only in how the same numbers are computed:
- without dropout (or in eval mode) the layer runs W x once and rescales it: g * (W x + s B A x) + b with
  g = m / n, which is peft's W x + b + (g - 1)(W x) + g s B A x rearranged; in float32 that is one GEMM
  against W + s B A (`lora.low_rank_linear`), which then also gives the row norm, g folded into the small
  factors of the backward;
- elsewhere (autocast, dropout, merge) the row norm comes from ||w_i||^2 + 2s b_i.(W A^T)_i +
  s^2 b_i (A A^T) b_i^T, never materialising the d_out x d_in update (peft builds it with an identity matmul,
  lora_B(lora_A(eye(d_in)))), and is cached, keyed on the version counters of W, A and B, so any in-place
  change (an optimizer step, load_state_dict, merge) invalidates it, in train or eval mode; peft caches only
  when a global flag is set and only in eval mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapters.base import ApplyPlan, BudgetSolution, TargetMatrix, solve_integer_rank
from peftbench.adapters.lora import (
    LoraAdapter,
    LoraConfig,
    LoraLinear,
    can_fuse,
    low_rank_linear,
    max_rank,
    scale_rows,
    with_rank,
    wrap_targets,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoraConfig(LoraConfig):
    """Same knobs as LoRA (r, alpha, dropout, rslora, init, lr_ratio); the magnitude vector has none of its own."""


def dora_row_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W + s B A|| per output row, without gradient, in at least float32.

    Expanding the square costs one d_out x d_in x r matmul (W A^T) plus r-sized work, and no d_out x d_in
    temporaries. Cancellation only bites when a row of W + s B A is far smaller than the same row of W, which
    DoRA never approaches (the rows start at ||W|| and the update is low-rank and small)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    # Autocast would run the matmuls in half precision; the norm sets every output's scale, so keep it exact.
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        w, a, b = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
        sq = w.square().sum(dim=1)
        sq += (2.0 * scaling) * (b * (w @ a.T)).sum(dim=1)
        sq += (scaling * scaling) * ((b @ (a @ a.T)) * b).sum(dim=1)
        return sq.clamp_min_(0.0).sqrt_()


class DoraLinear(LoraLinear):
    """LoraLinear plus a per-row magnitude. Merging is explicit (`merge`/`unmerge`), never tied to .eval()."""

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False, init: str = "kaiming"
    ) -> None:
        super().__init__(base, r, alpha, dropout, rslora, init)
        w = base.weight
        # W + s B A is W here (B = 0, or PiSSA's residual plus its factors), so this is ||W|| per row and
        # g = m / n is 1 until B or A moves.
        self.magnitude = nn.Parameter(dora_row_norm(w, self.lora_A, self.lora_B, self.scaling).to(w.dtype))
        self._norm_cache: tuple[tuple, torch.Tensor] | None = None
        # g = m / n as applied at merge time; unmerge divides by it (m may have been changed since).
        self._merge_scale: torch.Tensor | None = None

    def _norm_key(self) -> tuple | None:
        tensors = (self.base.weight, self.lora_A, self.lora_B)
        # Inference tensors have no version counter, so nothing could tell us they changed: do not cache.
        if any(t.is_inference() for t in tensors):
            return None
        # _version moves on every in-place write (optimizer steps, copy_, merge); data_ptr catches a swapped
        # storage (.to(), p.data = ...). Writes through `.data` bypass the counter; torch optimizers don't use it.
        return tuple((t._version, t.data_ptr(), t.device) for t in tensors)

    def clear_cache(self) -> None:
        self._norm_cache = None

    def row_norm(self) -> torch.Tensor:
        """||W + s B A|| per output row (detached), recomputed only when W, A or B changed."""
        key = self._norm_key()
        if key is not None and self._norm_cache is not None and self._norm_cache[0] == key:
            return self._norm_cache[1]
        n = dora_row_norm(self.base.weight, self.lora_A, self.lora_B, self.scaling)
        self._norm_cache = (key, n) if key is not None else None
        return n

    def train(self, mode: bool = True) -> DoraLinear:
        self.clear_cache()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        w, bias = self.base.weight, self.base.bias
        if can_fuse(x, w, self.dropout, self.training):
            # g * (W + s B A) x + b as one GEMM, the norm taken from the W + s B A it builds anyway
            # (see lora.low_rank_linear); the cached norm serves the other paths and merge.
            m = self.magnitude
            return low_rank_linear(x, w, bias, self.lora_A, self.lora_B, self.scaling, m, self.fused_training)
        # g stays in float32 (its parameter's dtype) even when autocast runs the GEMMs in bf16: rounded to bf16,
        # a change of m below 2^-8 of g would not move the output at all. As peft, the terms scaled by g are
        # summed in float32 and the sum is rounded once to the base output's dtype.
        g = self.magnitude / self.row_norm()
        if self.training and isinstance(self.dropout, nn.Dropout):
            # As peft and the paper's code: the magnitude rescales W dropout(x), not W x, so W runs twice here.
            xd = self.dropout(x)
            wxd = F.linear(xd, w)
            lora = F.linear(F.linear(xd, self.lora_A), self.lora_B)
            out = self.base(x)
            return (out + (g - 1.0) * wxd + (g * self.scaling) * lora).to(out.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        # W x + s B (A x), the low-rank product accumulated straight into the base output.
        h = torch.addmm(F.linear(x2, w), F.linear(x2, self.lora_A), self.lora_B.t(), alpha=self.scaling)
        out = scale_rows(h, g, bias)
        return out.view(*x.shape[:-1], out.shape[-1])

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        w = self.base.weight
        scale = (self.magnitude / self.row_norm()).unsqueeze(1)
        w.copy_(((w + self.delta_weight()) * scale).to(w.dtype))
        self._merge_scale = scale
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base.weight
        w.copy_((w / self._merge_scale - self.delta_weight()).to(w.dtype))
        self._merge_scale = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, magnitude={tuple(self.magnitude.shape)}, merged={self.merged}"


class DoraAdapter(LoraAdapter):
    """LoRA's adapter with DoRA layers; merge is inherited (it calls each layer's own merge)."""

    name = "dora"
    display_name = "DoRA"
    config_cls = DoraConfig
    budget_knobs = ("r",)
    default_lr = 1e-3
    # DoRA keeps LoRA's learning rates (Liu et al. 2024, the commonsense and GLUE-style setups), so LoRA's grid.
    tune_grid = {"lr": (5e-4, 1e-3, 2e-3)}
    is_reference = False
    peft_use_dora = True
    perf_floor_limit = 1.12
    perf_note = (
        "As LoRA, plus the magnitude's two passes: g * h + b in forward and the column sums of dy * h in "
        "backward. Folding g into W' (one GEMM) would need h back from the output, i.e. a division by g."
    )

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        targets = wrap_targets(model, plan, lambda lin: DoraLinear(lin, c.r, c.alpha, c.dropout, c.rslora, c.init))
        self.head_modules = plan.head_modules
        log.debug("dora: wrapped %d matrices at r=%d", len(targets), c.r)
        return model

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: LoraConfig) -> int:
        return sum(config.r * (t.d_in + t.d_out) + t.d_out for t in targets)

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: LoraConfig) -> BudgetSolution:
        per_rank = sum(t.d_in + t.d_out for t in targets)
        # The magnitude vectors cost d_out per matrix whatever the rank.
        fixed = sum(t.d_out for t in targets)
        r, achieved = solve_integer_rank(cls.name, budget, per_rank, fixed, max_rank(targets))
        # As LoRA: keep alpha/r constant so the update's scale does not depend on the budget.
        return BudgetSolution(with_rank(base, r), achieved, f"r={r}")
