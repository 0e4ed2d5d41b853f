"""Native LoRA against peft's: same A and B give the same outputs, merged and unmerged, train and eval."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.adapters.lora import LoraAdapter, LoraConfig, LoraLinear
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import BudgetError
from tests.conftest import tiny_bert_config

PEFT_TARGETS = (
    r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)


def _base_model(seed=0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _pair(r=4, alpha=8.0, rslora=False):
    import peft

    base = _base_model()
    ours = LoraAdapter(LoraConfig(r=r, alpha=alpha, rslora=rslora))
    mine = ours.apply(copy.deepcopy(base), ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS))
    cfg = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=PEFT_TARGETS, task_type="SEQ_CLS", use_rslora=rslora
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, m in mine.named_modules():
            if isinstance(m, LoraLinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
                pm = theirs.base_model.model.get_submodule(name)
                pm.lora_A["default"].weight.copy_(m.lora_A)
                pm.lora_B["default"].weight.copy_(m.lora_B)
    return ours, mine, theirs


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_match_peft(mode, rslora):
    ours, mine, theirs = _pair(rslora=rslora)
    mine.train(mode == "train")
    theirs.train(mode == "train")
    x = _inputs()
    a = mine(**x).logits
    b = theirs(**x).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    n_wrapped = sum(isinstance(m, LoraLinear) for m in mine.modules())
    assert n_wrapped == len(theirs.targeted_module_names) == 12


def test_merged_equals_unmerged_and_peft_merged():
    ours, mine, theirs = _pair()
    x = _inputs()
    before = mine(**x).logits
    ours.merge(mine)
    assert all(m.merged for m in mine.modules() if isinstance(m, LoraLinear))
    after = mine(**x).logits
    assert torch.allclose(before, after, atol=1e-5)
    merged_peft = theirs.merge_and_unload()
    assert torch.allclose(after, merged_peft(**x).logits, atol=1e-5)
    for m in mine.modules():
        if isinstance(m, LoraLinear):
            m.unmerge()
    assert torch.allclose(mine(**x).logits, before, atol=1e-5)


def test_identity_at_init_and_only_adapter_and_head_train():
    base = _base_model()
    model = LoraAdapter(LoraConfig(r=2)).apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    x = _inputs()
    assert torch.equal(model(**x).logits, base(**x).logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("classifier") for n in trainable)
    assert any(n.startswith("classifier") for n in trainable)


def test_param_count_and_budget_solving():
    base = _base_model()
    targets = find_targets(base, DEFAULT_TARGETS)
    per_rank = sum(t.d_in + t.d_out for t in targets)
    assert per_rank == 2 * (4 * 64 + 2 * (32 + 37))
    sol = LoraAdapter.for_budget(targets, 5 * per_rank + 10, LoraConfig(r=8, alpha=16))
    assert sol.config.r == 5 and sol.achieved == 5 * per_rank
    assert sol.config.alpha == pytest.approx(10.0)  # alpha / r kept at 2
    model = LoraAdapter(sol.config).apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    report = LoraAdapter(sol.config).param_report(model)
    assert report.adapter == LoraAdapter.adapter_count(targets, sol.config) == sol.achieved
    with pytest.raises(BudgetError, match="nearest achievable"):
        LoraAdapter.for_budget(targets, 10, LoraConfig())
    with pytest.raises(BudgetError, match="nearest achievable"):
        LoraAdapter.for_budget(targets, 10**9, LoraConfig())
