"""PiSSA initialisation of native LoRA and DoRA against peft 0.21's `init_lora_weights="pissa"` on a tiny BERT:
the same factors and residual, the same outputs before and after the factors move, merge, and bf16 storage of
the residual."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.dora import DoraAdapter, DoraConfig, DoraLinear
from peftbench.adapters.lora import LoraAdapter, LoraConfig, LoraLinear
from peftbench.adapters.pissa import pissa_factors
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import UsageError
from tests import test_bf16
from tests.test_lora import PEFT_TARGETS
from tests.test_vera import TOL, _base_model, _inputs

PLAN = ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS)


def _layers(model) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def _pair(dora: bool = False, rslora: bool = False, r: int = 4, alpha: float = 8.0):
    base = _base_model()
    cls, cfg_cls = (DoraAdapter, DoraConfig) if dora else (LoraAdapter, LoraConfig)
    ours = cls(cfg_cls(r=r, alpha=alpha, rslora=rslora, init="pissa"))
    mine = ours.apply(copy.deepcopy(base), PLAN)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, use_dora=dora, init_lora_weights="pissa",
                          target_modules=PEFT_TARGETS, task_type="SEQ_CLS")  # fmt: skip
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    return base, ours, mine, theirs


def _peft_layer(theirs, name):
    return theirs.base_model.model.get_submodule(name)


def _perturb(mine, theirs, seed: int = 7) -> None:
    """Move A and B (and DoRA's magnitude) identically in both, so every term of the forward is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in _layers(mine).items():
            m.lora_A.add_(0.1 * torch.randn(m.lora_A.shape, generator=g))
            m.lora_B.add_(0.1 * torch.randn(m.lora_B.shape, generator=g))
            pm = _peft_layer(theirs, name)
            pm.lora_A["default"].weight.copy_(m.lora_A)
            pm.lora_B["default"].weight.copy_(m.lora_B)
            if isinstance(m, DoraLinear):
                m.magnitude.mul_(1 + 0.1 * torch.randn(m.magnitude.shape, generator=g))
                pm.lora_magnitude_vector["default"].weight.copy_(m.magnitude)


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("rslora", [False, True])
def test_factors_and_residual_are_peft_s(dora, rslora):
    base, _, mine, theirs = _pair(dora, rslora)
    layers = _layers(mine)
    assert len(layers) == len(theirs.targeted_module_names) == 12
    for name, m in layers.items():
        pm = _peft_layer(theirs, name)
        # One SVD of one float32 matrix on both sides: the same signs and order, to the last bit or nearly.
        torch.testing.assert_close(m.lora_A, pm.lora_A["default"].weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(m.lora_B, pm.lora_B["default"].weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(m.base.weight, pm.base_layer.weight, atol=1e-6, rtol=1e-6)
        if dora:
            torch.testing.assert_close(m.magnitude, pm.lora_magnitude_vector["default"].weight, **TOL)
        # The principal part moved into the factors, the rest stayed: W = W_res + s B A.
        original = base.get_submodule(name).weight
        assert not torch.allclose(m.base.weight, original, atol=1e-3)
        torch.testing.assert_close(m.base.weight + m.delta_weight(), original, atol=1e-5, rtol=1e-5)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(mine(**x).logits, base(**x).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine(**x).logits, theirs(**x).logits, **TOL)


def test_factors_are_the_top_singular_triplets():
    w = torch.randn(37, 32, generator=torch.Generator().manual_seed(0))
    a, b, residual = pissa_factors(w, 5, scaling=0.25)
    s = torch.linalg.svdvals(w)
    # s B A is the best rank-5 approximation whatever the scaling: its singular values are W's top 5.
    torch.testing.assert_close(torch.linalg.svdvals(0.25 * b @ a)[:5], s[:5], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(residual)[:5], s[5:10], atol=1e-4, rtol=1e-5)
    with pytest.raises(UsageError, match="PiSSA needs r <= min"):
        pissa_factors(w, 33, scaling=1.0)


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_match_peft_after_the_factors_move(dora, mode):
    _, _, mine, theirs = _pair(dora)
    _perturb(mine, theirs)
    mine.train(mode == "train")
    theirs.train(mode == "train")
    x = _inputs()
    torch.testing.assert_close(mine(**x).logits, theirs(**x).logits, **TOL)


@pytest.mark.parametrize("dora", [False, True])
def test_merged_equals_unmerged_and_peft_merged(dora):
    _, ours, mine, theirs = _pair(dora)
    _perturb(mine, theirs)
    x = _inputs()
    with torch.no_grad():
        before = mine(**x).logits
        after = ours.merge(mine)(**x).logits
        assert all(m.merged for m in _layers(mine).values())
        torch.testing.assert_close(after, before, **TOL)
        torch.testing.assert_close(after, theirs.merge_and_unload()(**x).logits, **TOL)
        for m in _layers(mine).values():
            m.unmerge()
        torch.testing.assert_close(mine(**x).logits, before, **TOL)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bf16_storage_keeps_the_residual_and_matches_peft(mode, fused_calls):
    base, _, mine, theirs = _pair()
    residuals = {n: m.base.weight.detach().clone() for n, m in _layers(mine).items()}
    _perturb(mine, theirs)
    mine.train(mode == "train")
    theirs.train(mode == "train")
    pairs = []
    for name, m in _layers(mine).items():
        pm = _peft_layer(theirs, name)
        pairs += [(m.lora_A, pm.lora_A["default"].weight), (m.lora_B, pm.lora_B["default"].weight)]
    test_bf16.check_against_peft(mine, theirs, pairs, _inputs(), "bf16", fused_calls, base)
    for name, m in _layers(mine).items():
        # What is stored in bf16 is the residual, not the original weight; the factors keep float32.
        assert torch.equal(m.base.weight, residuals[name].to(torch.bfloat16)), name
        assert m.lora_A.dtype == m.lora_B.dtype == torch.float32


def test_bad_init_is_a_one_line_error():
    with pytest.raises(UsageError, match="init must be one of kaiming, pissa"):
        LoraConfig(init="gaussian")
    with pytest.raises(UsageError, match="PiSSA needs r <= min"):
        LoraAdapter(LoraConfig(r=33, init="pissa")).apply(_base_model(), PLAN)


fused_calls = test_bf16.fused_calls
