"""LoRA+ (Hayou et al., 2024): B learns lr_ratio times faster than A (the paper suggests 16).

The grouping is the paper's code's, which peft 0.21's `create_loraplus_optimizer` keeps: B and every
one-dimensional trainable parameter (biases, DoRA's magnitude, LayerNorm weights) at lr x ratio, every other
trainable parameter (A, the head's weight matrix) at lr; in the fast group, biases and LayerNorm parameters are
not decayed. peft's separate group for LoRA on embedding layers has nothing to hold here: only Linear layers
are adapted."""

from __future__ import annotations

from typing import Any

from torch import nn


def loraplus_groups(
    model: nn.Module, fast: set[int], lr: float, ratio: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups for torch optimizers; `fast` holds the ids of the B matrices. Empty groups are left out."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    slow, quick, quick_no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in fast or p.dim() == 1:
            undecayed = id(p) in no_decay or "bias" in name
            (quick_no_decay if undecayed else quick).append(p)
        else:
            slow.append(p)
    groups = [
        {"params": slow, "lr": lr, "weight_decay": weight_decay},
        {"params": quick, "lr": lr * ratio, "weight_decay": weight_decay},
        {"params": quick_no_decay, "lr": lr * ratio, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
