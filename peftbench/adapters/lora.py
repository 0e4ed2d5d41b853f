"""LoRA (Hu et al., 2021): h = W x + b + s * B A dropout(x), with B = 0 at init so the model is unchanged.

In float32 without dropout the layer runs as one GEMM against W + s B A (see `low_rank_linear`), which is
what makes an adapter on every Linear cost little more than the frozen model's own forward and backward."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapters.base import (
    HEAD_MODULES,
    Adapter,
    ApplyPlan,
    BudgetSolution,
    PeftTwin,
    TargetMatrix,
    config_replace,
    find_targets,
    freeze_all_but_head,
    set_submodule,
    solve_integer_rank,
)
from peftbench.adapters.loraplus import loraplus_groups
from peftbench.adapters.peft_format import PeftExport, lora_export
from peftbench.adapters.pissa import pissa_factors
from peftbench.errors import UsageError


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata={"help": "rank of the update B A"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator: s = alpha / r (or alpha / sqrt(r))"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})
    init: str = field(
        default="kaiming",
        metadata={
            "help": "kaiming: A kaiming-uniform, B = 0 (LoRA's); pissa: A and B from W's top-r singular triplets, "
            "the frozen W replaced by the residual W - s B A (PiSSA)"
        },
    )
    lr_ratio: float = field(
        default=1.0,
        metadata={"help": "LoRA+: B (and 1-d parameters) learn at lr x lr_ratio, A at lr (the paper suggests 16)"},
    )

    def __post_init__(self) -> None:
        if self.init not in LORA_INITS:
            raise UsageError(f"LoRA init must be one of {', '.join(LORA_INITS)}, got {self.init!r}")
        if not self.lr_ratio > 0:
            raise UsageError(f"LoRA lr_ratio must be > 0, got {self.lr_ratio}")


LORA_INITS = ("kaiming", "pissa")


def lora_scaling(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def with_rank(base, r: int):
    """`base` at rank r with alpha moved along, so the update's scale (alpha/r, or alpha/sqrt(r) with rslora, which
    needs no change) does not depend on the budget. Any frozen config with `r` and `alpha` fields."""
    rslora = getattr(base, "rslora", False)
    return config_replace(base, r=r, alpha=base.alpha if rslora else base.alpha * r / base.r)


# --- the fused low-rank linear ----------------------------------------------------------------------------


class _LowRankLinear(torch.autograd.Function):
    """y = g * (x W'^T) + b, W' = W + s B A, for a frozen W; with a magnitude m (DoRA) g = m / ||W'|| per row,
    the norm taken from the W' built here and detached (DoRA section 4.3), else g = 1.

    Why: the unfused form x W^T + s (x A^T) B^T pays, per token, two thin GEMMs and two full-width elementwise
    passes forward, and in backward a second input-gradient path plus the sum of the two. On CPU the thin GEMMs
    are bound by reading the activations, not by arithmetic. Here:
    - W' = W + s B A (d_out x d_in, smaller than the activations at any real batch) is built once, in forward,
      and kept for backward, where the input gradient is one GEMM against it, as for the frozen model
      (rebuilding it there was a strided addmm plus a copy: in bf16, at ~350-token batches, more than the
      layer's own GEMM);
    - backward computes the input gradient and (dy) B in one GEMM against [W' | s B], reading dy once;
    - with `concat` (training), forward computes x W'^T and x A^T in one GEMM against [W'; A], reading x once.
      The output is then the first d_out columns of that product (row stride d_out + r): it views like any
      tensor whose last dimension is split; merging that dimension with another needs reshape, not view.
    Thin products are laid out r x tokens: a tokens x r GEMM output or a transposed tokens x d operand makes
    MKL several times slower on these shapes. Rounding differs from the unfused form only in the last bits.

    Under autocast every GEMM runs in W's (half-precision) dtype, as the frozen model's do, while A, B, m and
    their gradients stay in float32: A and B are rounded only as GEMM operands, the gradients come out of the
    GEMMs and are widened, and DoRA's row scale g and its gradient never leave float32 (g scales the GEMM's
    output in float32, rounded once to bf16 as peft does), so a change of m below bf16's resolution still
    moves the output. W' itself is rounded once to W's dtype, which moves each entry by at most half a
    unit in its last place, the same rounding the frozen model's own weights have had."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling, magnitude, concat):  # noqa: ANN001 - autograd
        dt = weight.dtype
        ctx.x_dtype = x.dtype
        with _autocast_off(x):
            x2 = x.reshape(-1, x.shape[-1]).to(dt)
            a_c, b_c = lora_A.to(dt), lora_B.to(dt)
            d_out, r = weight.shape[0], lora_A.shape[0]
            need_a, need_b = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
            add_bias = None if bias is None or magnitude is not None else bias.to(dt)
            if concat and need_b:
                # [W'; A; 0], W' written in place: no weight-sized copy beyond the one addmm makes.
                pad = _pad(d_out + r)
                w_cat = weight.new_empty(d_out + r + pad, weight.shape[1])
                w_eff = torch.addmm(weight, b_c, a_c, alpha=scaling, out=w_cat[:d_out])
                w_cat[d_out : d_out + r] = a_c
                w_cat[d_out + r :] = 0.0
                b_cat = None if add_bias is None else torch.cat([add_bias, add_bias.new_zeros(r + pad)])
                y = F.linear(x2, w_cat, b_cat)
                dense = y[:, :d_out]
                # LoRA: copy the r columns out, so the saved tensor does not keep the whole product alive.
                xa_t = y[:, d_out : d_out + r].t()
                xa_t = xa_t if magnitude is not None else xa_t.contiguous()
            else:
                w_eff = torch.addmm(weight, b_c, a_c, alpha=scaling)
                dense = F.linear(x2, w_eff, add_bias)
                # (x A^T)^T is all B's gradient needs from the input; A's needs the input itself.
                xa_t = torch.mm(a_c, x2.t()) if need_b else None
            h = norm = g = None
            out = dense
            if magnitude is not None:
                norm = _row_norm(w_eff)
                g = magnitude / norm
                h = dense
                out = scale_rows(h, g, bias)
        ctx.scaling = scaling
        ctx.x_shape = x.shape
        ctx.save_for_backward(x2 if need_a else None, xa_t, w_eff, lora_A, lora_B, g, norm, h)
        return out.view(*x.shape[:-1], d_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001 - autograd signature
        x2, xa_t, w_eff, lora_A, lora_B, g, norm, h = ctx.saved_tensors
        dt = w_eff.dtype
        need_x, need_bias, need_a, need_b, need_m = (ctx.needs_input_grad[i] for i in (0, 2, 3, 4, 6))
        grad_x = grad_bias = grad_A = grad_B = grad_m = u_t = None
        with _autocast_off(grad_out):
            go = grad_out.reshape(-1, grad_out.shape[-1])
            if g is not None and need_m:
                grad_m = _column_dot(go, h) / norm
            go_c = go.to(dt)
            # The row scale multiplies every output row, so it folds into the d_out-sized factors (never into go).
            col = torch.full_like(lora_B[:, 0], ctx.scaling) if g is None else g * ctx.scaling
            b_eff = (lora_B * col.unsqueeze(1)).to(dt)
            if need_x:
                d_in, r = w_eff.shape[1], lora_B.shape[1]
                # [g W' | g s B | 0], so dy is read once for dx and for dy B.
                width = d_in + (r + _pad(d_in + r) if need_a else 0)
                w_back = w_eff.new_empty(w_eff.shape[0], width)
                if g is None:
                    w_back[:, :d_in] = w_eff
                else:
                    torch.mul(w_eff, g.unsqueeze(1), out=w_back[:, :d_in])
                if need_a:
                    w_back[:, d_in : d_in + r] = b_eff
                    w_back[:, d_in + r :] = 0.0
                z = torch.mm(go_c, w_back)
                grad_x = z[:, :d_in].view(ctx.x_shape).to(ctx.x_dtype)
                u_t = z[:, d_in : d_in + r].t() if need_a else None
            if need_bias:
                grad_bias = go.sum(0)
            # B's gradient first: it reads dy, which the GEMM above has just read.
            if need_b:
                grad_B = (torch.mm(xa_t, go_c).to(lora_B.dtype) * col).t()
            if need_a:
                if u_t is None:
                    u_t = torch.mm(b_eff.t().contiguous(), go_c.t())
                grad_A = torch.mm(u_t.contiguous(), x2).to(lora_A.dtype)
        return grad_x, None, grad_bias, grad_A, grad_B, None, grad_m, None


def scale_rows(h: torch.Tensor, g: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """g * h + b, computed in g's float32 and rounded once to h's dtype, as peft's DoRA rounds its float32 sum
    back to the base layer's output dtype: g rounded to bf16 would not see a change of m below 2^-8."""
    if torch.is_grad_enabled() and (h.requires_grad or g.requires_grad):
        # out= has no autograd; the cast back is a no-op when everything is float32 already.
        return (h * g if bias is None else torch.addcmul(bias, h, g)).to(h.dtype)
    # Without autograd the result is rounded straight into the output tensor.
    out = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    if h.dtype == g.dtype or h.device.type != "cpu":
        return torch.mul(h, g, out=out) if bias is None else torch.addcmul(bias, h, g, out=out)
    # torch's CPU kernels take a scalar loop for mixed dtypes (measured 2x slower than these three vectorised
    # passes over a cache-sized block at 4096 x 384 bf16, and 5x when h is a strided view); same float32 sums.
    h2, out2 = h.reshape(-1, h.shape[-1]), out.view(-1, h.shape[-1])
    b32 = None if bias is None else bias.to(g.dtype)
    tmp = torch.empty(min(h2.shape[0], _block_rows(h2)), h2.shape[1], dtype=g.dtype)
    for i in range(0, h2.shape[0], tmp.shape[0]):
        t = tmp[: h2.shape[0] - i]
        t.copy_(h2[i : i + t.shape[0]])
        if b32 is None:
            t.mul_(g)
        else:
            torch.addcmul(b32, t, g, out=t)
        out2[i : i + t.shape[0]] = t
    return out


def _block_rows(a: torch.Tensor) -> int:
    """Rows of a float32 block of about 512 KiB: it stays in a core's L2 cache between the passes over it."""
    return max(1, 2**17 // a.shape[-1])


def _autocast_off(t: torch.Tensor):
    """The fused function chooses every dtype itself; autocast would re-cast its operands (and W' twice)."""
    return torch.autocast(t.device.type, enabled=False)


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    """||w|| per row, accumulated and returned in at least float32 (DoRA's g must not be rounded to bf16)."""
    return torch.linalg.vector_norm(w, dim=1, dtype=torch.promote_types(w.dtype, torch.float32))


def _pad(width: int) -> int:
    """Zero columns that bring a concatenated GEMM width to a multiple of 8: MKL runs widths of 4 mod 8 (e.g.
    384 + 12) about 1.5x slower than the next multiple of 8."""
    return -width % 8


def _column_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over rows of a * b, a block of rows at a time: a full-size product would be a fresh tokens x d
    buffer (page faults included) written and read once. Products and sums in at least float32 (DoRA's m
    gradient): half-precision blocks are widened first, where a bf16 product would be rounded to 8 bits
    (measured 1.4e-3 relative error against float64, 1e-7 widened; peft's autograd multiplies in float32)."""
    acc = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    out = torch.zeros(a.shape[1], dtype=acc, device=a.device)
    rows = _block_rows(a)
    if a.dtype == acc and b.dtype == acc:
        for i in range(0, a.shape[0], rows):
            out += (a[i : i + rows] * b[i : i + rows]).sum(0)
        return out
    ta, tb = (torch.empty(min(rows, a.shape[0]), a.shape[1], dtype=acc, device=a.device) for _ in range(2))
    for i in range(0, a.shape[0], rows):
        n = min(rows, a.shape[0] - i)
        ta[:n].copy_(a[i : i + n])
        tb[:n].copy_(b[i : i + n])
        out += ta[:n].mul_(tb[:n]).sum(0)
    return out


def can_fuse(x: torch.Tensor, weight: torch.Tensor, dropout: nn.Module, training: bool) -> bool:
    """Whether `low_rank_linear` applies: a frozen W, no active dropout, and activations at least as large as
    W, below which building W + s B A costs more than the thin products it replaces. Outside autocast W must
    be float32/64 and match x. Under autocast W must be stored in autocast's dtype (`store_frozen_as`), as the
    harness stores it: the GEMMs then run in that dtype; an unconverted float32 W takes the unfused path,
    where autocast casts it per call as it does for the frozen model."""
    if weight.requires_grad or not x.is_floating_point():
        return False
    if training and not isinstance(dropout, nn.Identity):
        return False
    device = x.device.type
    if torch.is_autocast_enabled(device):
        if weight.dtype != torch.get_autocast_dtype(device):
            return False
    elif weight.dtype not in (torch.float32, torch.float64) or x.dtype != weight.dtype:
        return False
    d_out, d_in = weight.shape
    return (x.numel() // d_in) * (d_in + d_out) >= d_in * d_out


def low_rank_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    magnitude: torch.Tensor | None = None,
    training: bool = False,
) -> torch.Tensor:
    """g * (x (W + s B A)^T) + b in one GEMM, g = magnitude / ||W + s B A|| per row (DoRA) or 1; W must be
    frozen. The GEMMs run in W's dtype (see _LowRankLinear for half precision). `training` lets the forward
    share its GEMM with x A^T (see _LowRankLinear); in eval mode the forward is the frozen layer's own GEMM
    against W + s B A, so with B = 0 the output is the frozen layer's, bit for bit (LoRA)."""
    if torch.is_grad_enabled():
        return _LowRankLinear.apply(x, weight, bias, lora_A, lora_B, scaling, magnitude, training)
    dt = weight.dtype
    with _autocast_off(x):
        w_eff = torch.addmm(weight, lora_B.to(dt), lora_A.to(dt), alpha=scaling)
        if magnitude is None:
            return F.linear(x.to(dt), w_eff, None if bias is None else bias.to(dt))
        g = magnitude / _row_norm(w_eff)
        if dt in (torch.float32, torch.float64):
            w_eff *= g.unsqueeze(1)
            return F.linear(x, w_eff, bias)
        # In half precision g is applied to the output in float32: folded into W' it would be rounded with it.
        return scale_rows(F.linear(x.to(dt), w_eff), g, bias)


class AdditiveDelta(nn.Module):
    """A wrapped frozen Linear (`base`) whose update W' - W is `delta_weight()`: merging adds it into W, so the
    merged layer is the plain Linear (no adapter cost at inference); unmerging subtracts it again."""

    base: nn.Linear
    merged: bool

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

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


class LoraLinear(AdditiveDelta):
    """An nn.Linear plus a low-rank update. Merging is explicit (`merge`/`unmerge`), never tied to .eval()."""

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False, init: str = "kaiming"
    ) -> None:
        super().__init__()
        if r < 1:
            raise UsageError(f"LoRA rank must be >= 1, got r={r}")
        self.base = base
        self.r = r
        self.scaling = lora_scaling(alpha, r, rslora)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        self.pissa = init == "pissa"
        if self.pissa:
            a, b, residual = pissa_factors(w, r, self.scaling)
            with torch.no_grad():
                self.lora_A.copy_(a)
                self.lora_B.copy_(b)
                w.copy_(residual)
            # The starting factors, for an export relative to the original W (which is W_res + s B0 A0). Not in
            # the state: the same W always gives the same factors back.
            self.register_buffer("init_A", a.to(w.dtype), persistent=False)
            self.register_buffer("init_B", b.to(w.dtype), persistent=False)
        else:
            # Same init as peft's lora_A (an nn.Linear default: kaiming-uniform, a = sqrt(5)).
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def fused_training(self) -> bool:
        # The wrapped Linear carries the model's mode even when the wrapper was built on an eval-mode model
        # (a new module starts in train mode, as peft's do); the training-only GEMM layout follows the model.
        return self.training and self.base.training

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        w, bias = self.base.weight, self.base.bias
        if can_fuse(x, w, self.dropout, self.training):
            return low_rank_linear(x, w, bias, self.lora_A, self.lora_B, self.scaling, training=self.fused_training)
        out = self.base(x)
        # Scale the rank-r product, not the d_out-wide one, and let the GEMM accumulate into the base output.
        xa = F.linear(self.dropout(x), self.lora_A).reshape(-1, self.r)
        out2 = torch.addmm(out.reshape(-1, out.shape[-1]), xa, self.lora_B.t(), alpha=self.scaling)
        return out2.view(out.shape)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}" + (", pissa" if self.pissa else "")


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
    layer_cls = LoraLinear  # DoRA's layer is one too
    display_name = "LoRA"
    config_cls = LoraConfig
    budget_knobs = ("r",)
    default_lr = 1e-3
    # LoRA's RoBERTa-base GLUE table (Hu et al. 2022, Table 9: 4e-4..5e-4 over 25-80 epochs), scaled up for
    # runs of a few hundred steps.
    tune_grid = {"lr": (5e-4, 1e-3, 2e-3)}
    is_reference = True
    head_modules: tuple[str, ...] = HEAD_MODULES
    peft_use_dora = False  # DoRA is LoRA's layer with a magnitude: peft's LoraConfig(use_dora=True)
    perf_floor_limit = 1.05
    perf_note = (
        "The extra time over the floor is the thin GEMMs that give A and B their gradients (dy^T (x A^T) and "
        "(dy B)^T x, plus x A^T in forward where it is not folded into the main GEMM): each reads a tokens x d "
        "activation once and is bound by memory bandwidth on CPU, not by arithmetic. Closing the rest needs a "
        "kernel that produces them while the main GEMM streams the same rows, or x A^T shared by query, key and "
        "value (they read the same input)."
    )

    @classmethod
    def peft_twin(cls, config: LoraConfig, target_modules: str, task_type: str, total_steps: int) -> PeftTwin:
        import peft

        return PeftTwin(
            peft.LoraConfig(
                r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, use_rslora=config.rslora,
                use_dora=cls.peft_use_dora, target_modules=target_modules, task_type=task_type,
                init_lora_weights="pissa" if config.init == "pissa" else True,
            )
        )  # fmt: skip

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        c = self.config
        wrap_targets(model, plan, lambda lin: LoraLinear(lin, c.r, c.alpha, c.dropout, c.rslora, c.init))
        self.head_modules = plan.head_modules
        return model

    def peft_export(self, model: nn.Module) -> PeftExport:
        c = self.config
        layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}
        return lora_export(model, layers, alpha=c.alpha, dropout=c.dropout, rslora=c.rslora,
                           use_dora=self.peft_use_dora, head_modules=self.head_modules)  # fmt: skip

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        if self.config.lr_ratio == 1.0:
            return super().param_groups(model, lr, weight_decay)
        fast = {id(m.lora_B) for m in model.modules() if isinstance(m, LoraLinear)}
        return loraplus_groups(model, fast, lr, self.config.lr_ratio, weight_decay)

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: LoraConfig) -> int:
        return sum(config.r * (t.d_in + t.d_out) for t in targets)

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: LoraConfig) -> BudgetSolution:
        per_rank = sum(t.d_in + t.d_out for t in targets)
        r, achieved = solve_integer_rank(cls.name, budget, per_rank, 0, max_rank(targets))
        return BudgetSolution(with_rank(base, r), achieved, f"r={r}")
