"""peft's on-disk adapter format, written without peft: `adapter_config.json` and the tensors of
`adapter_model.safetensors`, named as peft 0.21's `get_peft_model_state_dict` names them, so that
`PeftModel.from_pretrained(base_model, directory)` rebuilds the trained model on the untouched base model.

Key layout (adapter name dropped, as peft saves it): `base_model.model.<module>.lora_A.weight` and `.lora_B.weight`
(LoRA, DoRA), `.lora_magnitude_vector` (DoRA), `.lora_A`, `.lora_B`, `.lora_E` (AdaLoRA, resized to the rank
pattern), and the task head as `modules_to_save` under its own name: `base_model.model.classifier.weight`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftbench.adapters.base import HEAD_MODULES, is_head_param
from peftbench.errors import UsageError

PREFIX = "base_model.model."

# peft's task types by the transformers head class: they pick the PeftModel subclass and the head it saves.
_TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForTokenClassification": "TOKEN_CLS",
}


@dataclass(frozen=True)
class PeftExport:
    """What peft's `save_pretrained` would write: the config (JSON-ready) and the tensors (float32, on the CPU)."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def exact_names(names: list[str]) -> str:
    """A regex of exactly these module names, for `target_modules` (peft matches a string with re.fullmatch)."""
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES.items() if name.endswith(suffix)), None)


def saved(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy: safetensors refuses shared storage, and the file must not alias live weights."""
    return t.detach().to("cpu", torch.float32, copy=True).contiguous()


def head_tensors(model: nn.Module, head_modules: tuple[str, ...] = HEAD_MODULES) -> dict[str, torch.Tensor]:
    """The trained head, keyed as peft saves `modules_to_save` (the wrapper's `modules_to_save.default` dropped)."""
    return {PREFIX + n: saved(p) for n, p in model.named_parameters() if is_head_param(n, head_modules)}


def common_config(model: nn.Module, peft_type: str, targets: list[str], heads: dict[str, torch.Tensor]) -> dict:
    """The keys every exported method shares; a method adds its own (r, lora_alpha, ...)."""
    modules = sorted({k.removeprefix(PREFIX).split(".", 1)[0] for k in heads})
    return {
        "peft_type": peft_type,
        "task_type": task_type(model),
        "target_modules": exact_names(targets),
        "modules_to_save": modules or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "base_model_name_or_path": None,
        "revision": None,
    }


def _unmerged(layers: dict[str, nn.Module], method: str) -> None:
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise UsageError(f"{method}: {merged[0]} is merged into its base weight; export before merging (or unmerge)")


def lora_export(
    model: nn.Module,
    layers: dict[str, nn.Module],
    *,
    alpha: float,
    dropout: float,
    rslora: bool,
    use_dora: bool,
    head_modules: tuple[str, ...] = HEAD_MODULES,
) -> PeftExport:
    """LoRA (and DoRA) layers as peft's LoraConfig builds them. A PiSSA-initialised layer trained on the residual
    W_res = W - s B0 A0 is written relative to the original W, as peft converts it on save
    (`path_initial_model_for_weight_conversion`): W + s [B, -B0] [A; A0] = W_res + s B A, a rank-2r LoRA with
    the same scaling (alpha doubled, or times sqrt(2) with rslora); DoRA's magnitude is unchanged by it."""
    _unmerged(layers, "DoRA" if use_dora else "LoRA")
    tensors: dict[str, torch.Tensor] = {}
    ranks, pissa = set(), False
    for name, layer in layers.items():
        a, b = layer.lora_A, layer.lora_B
        if layer.pissa:
            pissa = True
            a = torch.cat([a, layer.init_A.to(a.dtype)])
            b = torch.cat([b, -layer.init_B.to(b.dtype)], dim=1)
        ranks.add(a.shape[0])
        tensors[f"{PREFIX}{name}.lora_A.weight"] = saved(a)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = saved(b)
        if use_dora:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = saved(layer.magnitude)
    if len(ranks) != 1:
        raise UsageError(f"LoRA export needs one rank for every layer, found {sorted(ranks)}")
    heads = head_tensors(model, head_modules)
    config = common_config(model, "LORA", list(layers), heads)
    config.update(
        r=ranks.pop(),
        lora_alpha=(alpha * math.sqrt(2) if rslora else 2 * alpha) if pissa else alpha,
        lora_dropout=dropout,
        use_rslora=rslora,
        use_dora=use_dora,
    )
    return PeftExport(config, {**tensors, **heads})


def adalora_export(
    model: nn.Module,
    layers: dict[str, nn.Module],
    *,
    alpha: float,
    dropout: float,
    schedule: dict[str, int],
    head_modules: tuple[str, ...] = HEAD_MODULES,
    **settings: Any,
) -> PeftExport:
    """AdaLoRA layers as peft's AdaLoraConfig builds them, resized to the rank pattern as peft saves them.

    peft builds every matrix at one init_r and scales by alpha / (init_r + 1e-5); a matrix of ours whose rank was
    capped below it (by its own size) is scaled by its own rank, so the difference goes into its lambda values.
    A triplet is kept if the allocator kept it or its value is non-zero (before the final phase a pruned value
    may have come back): either way the written adapter computes what the model computes."""
    _unmerged(layers, "AdaLoRA")
    init_r = max(layer.r for layer in layers.values())
    peft_scaling = alpha / (init_r + 1e-5)
    tensors: dict[str, torch.Tensor] = {}
    pattern: dict[str, list[bool]] = {}
    for name, layer in layers.items():
        keep = layer.kept | (layer.lam.detach() != 0)
        key = PREFIX + name
        tensors[f"{key}.lora_A"] = saved(layer.Q[keep])
        tensors[f"{key}.lora_B"] = saved(layer.P[:, keep])
        tensors[f"{key}.lora_E"] = saved((layer.lam[keep] * (layer.scaling / peft_scaling)).unsqueeze(1))
        pattern[f"{name}.lora_E"] = keep.tolist() + [False] * (init_r - layer.r)
    heads = head_tensors(model, head_modules)
    config = common_config(model, "ADALORA", list(layers), heads)
    config.update(
        init_r=init_r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        rank_pattern=pattern,
        total_step=schedule["total_steps"],
        tinit=schedule["t_init"],
        tfinal=schedule["t_final"],
        deltaT=schedule["delta_t"],
        **settings,
    )
    return PeftExport(config, {**tensors, **heads})
