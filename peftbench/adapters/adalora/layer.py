"""AdaLoRA's SVD-shaped update: h = W x + b + s * P diag(lambda) Q dropout(x), s = alpha / (r_init + 1e-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.adapters.lora import AdditiveDelta, can_fuse, low_rank_linear
from peftbench.errors import UsageError


class AdaLoraLinear(AdditiveDelta):
    """An nn.Linear plus P diag(lambda) Q. Pruning zeroes lambda entries (the allocator does it); P and Q keep
    all r_init rows/columns and stay trainable, as in peft. Merging is explicit (`merge`/`unmerge`)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise UsageError(f"AdaLoRA rank must be >= 1, got r={r}")
        self.base = base
        # The initial rank; peft's `ranknum` never changes after pruning, so neither does the scaling.
        self.r = r
        self.scaling = alpha / (r + 1e-5)
        w = base.weight
        self.P = nn.Parameter(torch.empty(base.out_features, r, dtype=w.dtype, device=w.device))
        self.lam = nn.Parameter(torch.zeros(r, dtype=w.dtype, device=w.device))
        self.Q = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        # lambda = 0 makes the update zero at init, so the singular vectors can start random (peft's init).
        nn.init.normal_(self.P, mean=0.0, std=0.02)
        nn.init.normal_(self.Q, mean=0.0, std=0.02)
        # Which triplets the last allocation kept; persistent so a saved state restores the rank pattern.
        self.register_buffer("kept", torch.ones(r, dtype=torch.bool, device=w.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def triplet_cost(self) -> int:
        """Parameters held by one singular triplet (a column of P, a value, a row of Q)."""
        return self.base.in_features + self.base.out_features + 1

    @property
    def rank(self) -> int:
        return int(self.kept.sum().item())

    def delta_weight(self) -> torch.Tensor:
        return (self.P @ (self.Q * self.lam.unsqueeze(1))) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        w = self.base.weight
        if can_fuse(x, w, self.dropout, self.training):
            # W + s P diag(lambda) Q in one GEMM (see lora.low_rank_linear); lambda's gradient comes through Q * lam.
            q_lam = self.Q * self.lam.unsqueeze(1)
            training = self.training and self.base.training  # the model's mode (see LoraLinear.fused_training)
            return low_rank_linear(x, w, self.base.bias, q_lam, self.P, self.scaling, training=training)
        out = self.base(x)
        update = F.linear(F.linear(self.dropout(x.to(self.Q.dtype)), self.Q * self.lam.unsqueeze(1)), self.P)
        return out + (update * self.scaling).to(out.dtype)

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Zero the values of pruned triplets: they then contribute exactly nothing to the output."""
        self.lam.masked_fill_(~self.kept, 0.0)

    def extra_repr(self) -> str:
        return f"r_init={self.r}, rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def orth_penalty(layers: list[AdaLoraLinear], squared: bool = False) -> torch.Tensor:
    """R = mean over every P and Q of ||P^T P - I||_F and ||Q Q^T - I||_F (peft averages over the 2N matrices;
    `squared` squares each norm as the paper writes it). Pruned triplets stay in: peft keeps them too.

    Why batched: a model has ~100-150 of these small matrices, and per matrix the Gram product, the identity,
    the difference and the norm are each a dispatch (a kernel launch on a GPU) of microseconds of work. Stacked
    by shape (one stack per distinct d_out or d_in, a handful in a transformer) it is a few batched GEMMs and
    norms whatever the depth, against one cached identity per rank. The sum may differ from the per-matrix
    loop's in the last bits (summation order)."""
    if not layers:
        raise UsageError("AdaLoRA's regulariser needs adapted layers; call apply() first")
    by_shape: dict[tuple[str, torch.Size], list[torch.Tensor]] = {}
    for layer in layers:
        by_shape.setdefault(("P", layer.P.shape), []).append(layer.P)
        by_shape.setdefault(("Q", layer.Q.shape), []).append(layer.Q)
    terms = []
    for (kind, _), mats in by_shape.items():
        stack = torch.stack(mats)
        grams = stack.mT @ stack if kind == "P" else stack @ stack.mT
        diff = grams - _identity(grams.shape[-1], grams.dtype, grams.device)
        # The squared form avoids the norm's sqrt, whose gradient is undefined at an exactly orthogonal matrix.
        terms.append(diff.square().sum(dim=(-2, -1)) if squared else torch.linalg.matrix_norm(diff, ord="fro"))
    return torch.cat(terms).sum() / (2 * len(layers))


_IDENTITIES: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _identity(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One n x n identity per (n, dtype, device), built once instead of at every step; never written to."""
    key = (n, dtype, device)
    eye = _IDENTITIES.get(key)
    if eye is None:
        eye = _IDENTITIES[key] = torch.eye(n, dtype=dtype, device=device)
    return eye
