"""BitFit on a tiny BERT: only the targeted biases (and the head) get gradients, the count is the documented
formula, the model is unchanged at initialisation. peft has no BitFit, so this is checked directly."""

from __future__ import annotations

import copy

import torch
from transformers import BertForSequenceClassification

from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.adapters.bitfit import BitFitAdapter, BitFitConfig, block_layernorms
from peftbench.config import DEFAULT_TARGETS
from tests.conftest import tiny_bert_config


def _base() -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    with torch.no_grad():  # BERT starts its biases at zero; non-zero ones make "unchanged" mean something
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1)
    return model


def _grads(model) -> set[str]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 900, (3, 8), generator=g)
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1, 2])).loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_only_target_biases_and_head_get_gradients():
    targets = ("query", "value", "intermediate.dense")
    model = BitFitAdapter(BitFitConfig()).apply(_base(), ApplyPlan(10, targets))
    expected = {f"{t.name}.bias" for t in find_targets(model, targets)} | {"classifier.weight", "classifier.bias"}
    assert len(expected) == 2 * 3 + 2
    assert _grads(model) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_count_is_the_sum_of_d_out_and_layernorm_adds_its_width():
    base = _base()
    targets = find_targets(base, DEFAULT_TARGETS)
    adapter = BitFitAdapter(BitFitConfig())
    report = adapter.param_report(adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS)))
    assert report.adapter == sum(t.d_out for t in targets) == 2 * (4 * 32 + 37 + 32)
    with_ln = BitFitAdapter(BitFitConfig(layernorm=True))
    model = with_ln.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    norms = block_layernorms(model, ("classifier",))
    assert len(norms) == 2 * 2  # attention and output LayerNorm per block; the embeddings' one is not a block's
    assert with_ln.param_report(model).adapter == report.adapter + sum(ln.normalized_shape[0] for _, ln in norms)
    assert not any(ln.weight.requires_grad for _, ln in norms)
    assert not model.bert.embeddings.LayerNorm.bias.requires_grad


def test_unchanged_at_init_and_merge_is_a_no_op():
    base = _base()
    adapter = BitFitAdapter(BitFitConfig(layernorm=True))
    model = adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    ids = torch.randint(5, 900, (2, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert adapter.merge(model) is model
