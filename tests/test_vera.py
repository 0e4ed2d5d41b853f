"""Native VeRA against peft 0.21's: the same seed gives the same shared matrices, and with the same scaling vectors
the outputs (train and eval, merged and unmerged) and the vectors' gradients agree in float32."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.adapters.vera import MAX_RANK, VeraAdapter, VeraConfig, VeraLinear
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import BudgetError
from tests.conftest import tiny_bert_config
from tests.test_lora import PEFT_TARGETS

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _base_model():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    with torch.no_grad():  # non-zero biases, so an update that touched the bias would show
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0.0, 0.1)
    return model


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _layers(model) -> dict[str, VeraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, VeraLinear)}


def _pair(r=16, seed=5):
    base = _base_model()
    ours = VeraAdapter(VeraConfig(r=r, projection_seed=seed))
    mine = ours.apply(copy.deepcopy(base), ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS))
    cfg = peft.VeraConfig(r=r, target_modules=PEFT_TARGETS, task_type="SEQ_CLS", projection_prng_key=seed)
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    shared = ours.shared
    # Same seed, same draw: the shared matrices agree before anything is copied.
    assert torch.equal(shared.A, theirs.base_model.vera_A["default"])
    assert torch.equal(shared.B, theirs.base_model.vera_B["default"])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        theirs.base_model.vera_A["default"].copy_(shared.A)
        theirs.base_model.vera_B["default"].copy_(shared.B)
        for name, m in _layers(mine).items():
            pm = theirs.base_model.model.get_submodule(name)
            assert torch.equal(pm.vera_lambda_d["default"], m.vera_d)  # d_initial, and b at zero
            assert torch.equal(pm.vera_lambda_b["default"], m.vera_b)
            m.vera_d.copy_(torch.randn(m.vera_d.shape, generator=g))
            m.vera_b.copy_(torch.randn(m.vera_b.shape, generator=g) * 0.1)
            pm.vera_lambda_d["default"].copy_(m.vera_d)
            pm.vera_lambda_b["default"].copy_(m.vera_b)
    return ours, mine, theirs


def test_shared_matrices_are_sliced_per_shape_and_shared():
    ours, mine, theirs = _pair()
    layers = _layers(mine)
    assert len(layers) == len(theirs.targeted_module_names) == 12
    assert tuple(ours.shared.A.shape) == (16, 37) and tuple(ours.shared.B.shape) == (37, 16)
    assert all(m.shared is ours.shared for m in layers.values())
    mine.double()
    assert all(m.shared is ours.shared and m.shared.A.dtype == torch.float64 for m in layers.values())


# One token: fewer activations than a weight's worth, so the layer takes the unfused path (lora.can_fuse).
@pytest.mark.parametrize("tokens", [11, 1])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_and_gradients_match_peft(mode, tokens):
    ours, mine, theirs = _pair()
    mine.train(mode == "train")
    theirs.train(mode == "train")
    x = {k: v[:, :tokens] for k, v in _inputs().items()}
    x["labels"] = torch.tensor([0, 1, 1])
    a, b = mine(**x), theirs(**x)
    assert torch.allclose(a.logits, b.logits, **TOL), (a.logits - b.logits).abs().max()
    a.loss.backward()
    b.loss.backward()
    for name, m in _layers(mine).items():
        pm = theirs.base_model.model.get_submodule(name)
        assert torch.allclose(m.vera_d.grad, pm.vera_lambda_d["default"].grad, **TOL), name
        assert torch.allclose(m.vera_b.grad, pm.vera_lambda_b["default"].grad, **TOL), name
        assert m.base.weight.grad is None


def test_merged_equals_unmerged_and_peft_merged():
    ours, mine, theirs = _pair()
    x = _inputs()
    with torch.no_grad():
        before = mine(**x).logits
        after = ours.merge(mine)(**x).logits
        assert all(m.merged for m in _layers(mine).values())
        assert torch.allclose(before, after, **TOL)
        assert torch.allclose(after, theirs.merge_and_unload()(**x).logits, **TOL)
        for m in _layers(mine).values():
            m.unmerge()
        assert torch.allclose(mine(**x).logits, before, **TOL)


def test_identity_at_init_and_only_vectors_and_head_train():
    base = _base_model()
    model = VeraAdapter(VeraConfig(r=8)).apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    x = _inputs()
    assert torch.equal(model(**x).logits, base(**x).logits)
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vera_d", "vera_b", "weight", "bias"}
    assert all(n.startswith("classifier") for n, p in model.named_parameters() if p.requires_grad and "vera" not in n)


def test_param_count_and_budget_solving():
    base = _base_model()
    targets = find_targets(base, DEFAULT_TARGETS)
    d_out = 2 * (4 * 32 + 37 + 32)
    assert VeraAdapter.adapter_count(targets, VeraConfig(r=10)) == 12 * 10 + d_out
    sol = VeraAdapter.for_budget(targets, d_out + 12 * 50 + 5, VeraConfig())
    assert sol.config.r == 50 and sol.achieved == d_out + 12 * 50
    adapter = VeraAdapter(sol.config)
    report = adapter.param_report(adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS)))
    assert report.adapter == sol.achieved
    with pytest.raises(BudgetError, match="nearest achievable"):
        VeraAdapter.for_budget(targets, 100, VeraConfig())
    with pytest.raises(BudgetError, match="nearest achievable"):
        VeraAdapter.for_budget(targets, 3 * (d_out + 12 * MAX_RANK), VeraConfig())


def test_count_and_output_at_init_match_peft():
    base = _base_model()
    ours = VeraAdapter(VeraConfig(r=16, projection_seed=5))
    mine = ours.apply(copy.deepcopy(base), ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS))
    cfg = peft.VeraConfig(r=16, target_modules=PEFT_TARGETS, task_type="SEQ_CLS", projection_prng_key=5)
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    # peft counts the head (modules_to_save) with the adapter; the shared A and B are buffers on both sides.
    report = ours.param_report(mine)
    assert theirs.get_nb_trainable_parameters()[0] == report.adapter + report.head
    x = _inputs()
    assert torch.allclose(mine(**x).logits, theirs(**x).logits, **TOL)
