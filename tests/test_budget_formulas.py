"""The README's adapter-count formulas, one per built-in method, evaluated on a tiny BERT's target shapes and
compared with what `param_report` counts on the adapted model (and with `adapter_count`, what planning promises).
Each formula is written here as the README states it; the README row is checked to say the same."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from torch import nn

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, TargetMatrix, find_targets, is_head_param
from peftbench.adapters.bitfit import block_layernorms
from peftbench.config import DEFAULT_TARGETS
from tests.conftest import tiny_bert_config

PLAN = ApplyPlan(total_steps=20, targets=DEFAULT_TARGETS)
README = Path(__file__).resolve().parents[1] / "README.md"


def _model() -> nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()


def _targets(model: nn.Module) -> list[TargetMatrix]:
    return find_targets(model, DEFAULT_TARGETS)


def _full(model, ts, cfg):
    return sum(p.numel() for n, p in model.named_parameters() if not is_head_param(n))


def _bitfit(model, ts, cfg):
    widths = sum(ln.normalized_shape[0] for _, ln in block_layernorms(model, ("classifier",)))
    return sum(t.d_out for t in ts) + (widths if cfg.layernorm else 0)


def _ia3(model, ts, cfg):
    return sum(t.d_out for t in ts if t.kind in cfg.scale_outputs) + sum(
        t.d_in for t in ts if t.kind in cfg.scale_inputs
    )


# method -> (the README's formula cell, its value from the target shapes, the configs to check it on)
FORMULAS: dict[str, tuple[str, Callable, tuple[dict, ...]]] = {
    "full": ("every parameter outside the head", _full, ({},)),
    "head": ("0", lambda model, ts, cfg: 0, ({},)),
    "bitfit": (
        "Σ d_out over the target Linears (with a bias); `layernorm=true` adds each block LayerNorm's width",
        _bitfit,
        ({}, {"layernorm": True}),
    ),
    "lora": (
        "Σ r·(d_in + d_out), whatever the initialisation (`init=pissa`) or the LoRA+ ratio (`lr_ratio`)",
        lambda model, ts, cfg: sum(cfg.r * (t.d_in + t.d_out) for t in ts),
        ({}, {"r": 3}, {"r": 5, "init": "pissa"}, {"lr_ratio": 16.0}),
    ),
    "dora": (
        "Σ r·(d_in + d_out) + d_out, the same with `init=pissa` or `lr_ratio`",
        lambda model, ts, cfg: sum(cfg.r * (t.d_in + t.d_out) + t.d_out for t in ts),
        ({}, {"r": 5, "init": "pissa", "lr_ratio": 16.0}),
    ),
    "adalora": (
        "Σ over retained triplets of (d_in + d_out + 1)",
        lambda model, ts, cfg: sum(_retained(model, t) * (t.d_in + t.d_out + 1) for t in ts),
        ({}, {"init_r": 6, "target_r": 2}),
    ),
    "ia3": (
        "Σ d_out over the key and value Linears + Σ d_in over the FFN output projections "
        "(BERT: 2·hidden + intermediate per layer)",
        _ia3,
        ({},),
    ),
    "vera": (
        "Σ (r + d_out); the shared A and B are frozen buffers, not counted",
        lambda model, ts, cfg: sum(cfg.r + t.d_out for t in ts),
        ({}, {"r": 64}),
    ),
}


def _retained(model: nn.Module, t: TargetMatrix) -> int:
    return int(model.get_submodule(t.name).kept.sum())


def _prune(model: nn.Module) -> None:
    """Drop a different number of triplets per matrix, as an allocation would, so 'retained' means something."""
    with torch.no_grad():
        for i, m in enumerate(m for m in model.modules() if hasattr(m, "kept")):
            m.kept[: i % m.r].fill_(False)
            m.apply_mask()


def _readme_formulas() -> dict[str, str]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `(\w+)` \| (.+?) \| [^|]+ \|$", line)
        if m and ("Σ" in line or "unbudgeted" in line):
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_built_in_method_has_a_formula():
    # Native methods; the peft backend's counts are peft's own, checked against native in test_peft_backend.
    built_in = {
        ep.name
        for ep in entry_points(group="peftbench.adapters")
        if ep.value.startswith("peftbench.") and not ep.value.startswith("peftbench.adapters.peft_backend")
    }
    assert built_in <= set(FORMULAS)


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_the_readme_states_the_formula(method):
    assert _readme_formulas().get(method) == FORMULAS[method][0]


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_formula_equals_the_count(method):
    cls = registry.adapters.get(method)
    _, formula, settings = FORMULAS[method]
    for changes in settings:
        config = cls.config_cls(**changes)
        adapter = cls(config)
        model = adapter.apply(_model(), PLAN)
        targets = _targets(_model())
        if method == "adalora":
            assert adapter.param_report(model).adapter_peak == formula(model, targets, config)  # all retained
            _prune(model)
        expected = formula(model, targets, config)
        assert adapter.param_report(model).adapter == expected, (method, changes)
        if cls.budgeted and method != "adalora":
            assert cls.adapter_count(targets, config) == expected, (method, changes)
