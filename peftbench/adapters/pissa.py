"""PiSSA (Meng et al., 2024): LoRA started from W's principal singular triplets instead of from zero.

With W = U S V^T, A = sqrt(S_r / s) V_r^T and B = U_r sqrt(S_r / s), so that s B A = U_r S_r V_r^T is W's best
rank-r approximation whatever the scaling s; the frozen weight becomes the residual W - s B A, and the model is
unchanged at initialisation. The convention (S divided by the scaling, the SVD in float32, the residual cast back
to W's dtype) is peft 0.21's `init_lora_weights="pissa"`, so the same W gives the same factors."""

from __future__ import annotations

import torch

from peftbench.errors import UsageError


@torch.no_grad()
def pissa_factors(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B, residual) for a d_out x d_in weight: A is r x d_in, B d_out x r (float32), the residual in W's dtype."""
    d_out, d_in = weight.shape
    if r > min(d_out, d_in):
        raise UsageError(
            f"PiSSA needs r <= min(d_in, d_out) = {min(d_out, d_in)} on a {d_out}x{d_in} weight, got r={r}"
        )
    w = weight.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = (s[:r] / scaling).sqrt()
    a = root.unsqueeze(1) * vh[:r]
    b = u[:, :r] * root
    # (s B) A, the order peft multiplies in: the residual then matches its own to the last bit.
    residual = w - scaling * b @ a
    return a.contiguous(), b.contiguous(), residual.to(weight.dtype)
