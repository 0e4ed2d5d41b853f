"""One contract, every registered method: generated from the registry, so a new method is tested automatically."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import UsageError
from tests.conftest import tiny_bert_config

METHODS = registry.adapters.names()
PLAN = ApplyPlan(total_steps=20, targets=DEFAULT_TARGETS)


def _model():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 900, (4, 9), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}


def _train_steps(adapter, model, steps=4):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for step in range(steps):
        out = model(**_batch())
        extra = adapter.extra_loss(model)
        loss = out.loss if extra is None else out.loss + extra
        loss.backward()
        opt.step()
        adapter.on_step_end(model, step)
        opt.zero_grad(set_to_none=True)
    model.eval()


def _load(name: str):
    """The method's class; a method whose optional dependency is missing here is skipped, not failed."""
    try:
        return registry.adapters.get(name)
    except UsageError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", METHODS)
def test_identity_at_initialisation(name):
    cls = _load(name)
    base = _model()
    adapted = cls(cls.config_cls()).apply(copy.deepcopy(base), PLAN)
    x = _batch()
    assert torch.allclose(adapted(**x).logits, base(**x).logits, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_head_trains_and_report_adds_up(name):
    cls = _load(name)
    adapter = cls(cls.config_cls())
    model = adapter.apply(_model(), PLAN)
    assert all(p.requires_grad for p in model.classifier.parameters())
    r = adapter.param_report(model)
    assert r.head == sum(p.numel() for p in model.classifier.parameters())
    assert r.total == sum(p.numel() for p in model.parameters())
    peak = r.adapter_peak if r.adapter_peak is not None else r.adapter
    assert r.trainable == peak + r.head


def _budgeted(name: str) -> bool:
    try:
        return registry.adapters.get(name).budgeted
    except UsageError:
        return True  # listed, then skipped by _load with the reason


@pytest.mark.parametrize("name", [n for n in METHODS if _budgeted(n)])
def test_param_count_equals_what_for_budget_promised(name):
    cls = _load(name)
    targets = find_targets(_model(), DEFAULT_TARGETS)
    per_rank = sum(t.d_in + t.d_out for t in targets)
    # Four ranks' worth: inside every budgeted method's range on this model (LoKr's factors top out near 5.7).
    requested = 4 * per_rank
    sol = cls.for_budget(targets, requested, cls.config_cls())
    if sol.neighbours is None:
        # As close as an integer rank allows: within half of one rank's cost (on MiniLM that is within 5%).
        assert abs(sol.achieved - requested) <= per_rank / 2 + 1
    else:
        # A knob with uneven steps: the nearer of the two counts next to the request.
        below, above = sol.neighbours
        assert below <= requested <= above and sol.achieved in (below, above)
    adapter = cls(sol.config)
    model = adapter.apply(_model(), PLAN)
    _train_steps(adapter, model, steps=PLAN.total_steps)
    assert cls.adapter_count(targets, sol.config) == sol.achieved
    final = adapter.param_report(model).adapter
    if cls.peak_adapter_count(targets, sol.config) is None:
        assert final == sol.achieved
    else:
        # Pruned during training (AdaLoRA in triplet mode knows its count only at the end): within one rank.
        assert abs(final - sol.achieved) <= per_rank


@pytest.mark.parametrize("name", METHODS)
def test_merged_equals_unmerged_after_training(name):
    cls = _load(name)
    adapter = cls(cls.config_cls())
    model = adapter.apply(_model(), PLAN)
    _train_steps(adapter, model)
    x = _batch()
    with torch.no_grad():
        before = model(**x).logits
        merged = adapter.merge(model)(**x).logits
    assert torch.allclose(before, merged, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trips(name):
    cls = _load(name)
    adapter = cls(cls.config_cls())
    model = adapter.apply(_model(), PLAN)
    _train_steps(adapter, model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = cls(cls.config_cls()).apply(_model(), PLAN)
    other.load_state_dict(state)
    other.eval()
    x = _batch()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, other(**x).logits)
    assert isinstance(adapter.diagnostics(), dict)
