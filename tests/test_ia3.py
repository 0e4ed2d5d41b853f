"""Native (IA)³ against peft 0.21's IA3: with the same vectors the outputs (train and eval, merged and unmerged) and
the vectors' gradients agree in float32; the defaults are the paper's keys, values and FFN activation."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.ia3 import IA3Adapter, IA3Config, IA3Linear
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import UsageError
from tests.test_vera import TOL, _base_model, _inputs

# The paper's set, spelled for peft: keys and values scaled at the output, the FFN's output projection at the input.
PEFT_TARGETS = r".*\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"
PEFT_FEEDFORWARD = r".*\.layer\.\d+\.output\.dense"


def _layers(model) -> dict[str, IA3Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def _pair(config=None, peft_config=None):
    base = _base_model()
    ours = IA3Adapter(config or IA3Config())
    mine = ours.apply(copy.deepcopy(base), ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS))
    cfg = peft_config or peft.IA3Config(
        target_modules=PEFT_TARGETS, feedforward_modules=PEFT_FEEDFORWARD, task_type="SEQ_CLS"
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, m in _layers(mine).items():
            pm = theirs.base_model.model.get_submodule(name)
            assert pm.is_feedforward == m.on_input, name
            assert torch.equal(pm.ia3_l["default"].flatten(), m.ia3_scale)  # ones
            m.ia3_scale.copy_(1.0 + 0.3 * torch.randn(m.ia3_scale.shape, generator=g))
            pm.ia3_l["default"].copy_(m.ia3_scale.view(pm.ia3_l["default"].shape))
    return ours, mine, theirs


def test_default_targets_are_the_papers():
    _, mine, theirs = _pair()
    layers = _layers(mine)
    assert len(layers) == len(theirs.targeted_module_names) == 6
    assert {n.split(".", 4)[-1] for n in layers} == {"attention.self.key", "attention.self.value", "output.dense"}
    assert {n for n, m in layers.items() if m.on_input} == {f"bert.encoder.layer.{i}.output.dense" for i in (0, 1)}


def test_peft_bert_defaults_reproduced_with_attention_output():
    # peft's BERT defaults match "output.dense" by suffix, so they also scale attention.output.dense's input.
    cfg = IA3Config(scale_inputs=("output.dense", "attention.output.dense"))
    ours, mine, theirs = _pair(cfg, peft.IA3Config(task_type="SEQ_CLS"))
    assert set(_layers(mine)) == {n.removeprefix("base_model.model.") for n in theirs.targeted_module_names}
    x = _inputs()
    assert torch.allclose(mine(**x).logits, theirs(**x).logits, **TOL)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_and_gradients_match_peft(mode):
    ours, mine, theirs = _pair()
    mine.train(mode == "train")
    theirs.train(mode == "train")
    x = {**_inputs(), "labels": torch.tensor([0, 1, 1])}
    a, b = mine(**x), theirs(**x)
    assert torch.allclose(a.logits, b.logits, **TOL), (a.logits - b.logits).abs().max()
    a.loss.backward()
    b.loss.backward()
    for name, m in _layers(mine).items():
        pm = theirs.base_model.model.get_submodule(name)
        assert torch.allclose(m.ia3_scale.grad, pm.ia3_l["default"].grad.flatten(), **TOL), name
        assert m.base.weight.grad is None and m.base.bias.grad is None


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


def test_identity_at_init_count_and_bad_configs():
    base = _base_model()
    adapter = IA3Adapter(IA3Config())
    model = adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    x = _inputs()
    assert torch.equal(model(**x).logits, base(**x).logits)
    # keys and values: d_out = hidden; FFN output projection: d_in = intermediate; per layer, two layers.
    assert adapter.param_report(model).adapter == 2 * (32 + 32 + 37)
    assert set(adapter.diagnostics()["mean_abs_shift"]) == {
        "attention.self.key",
        "attention.self.value",
        "output.dense",
    }
    with pytest.raises(UsageError, match="not both"):
        IA3Adapter(IA3Config(scale_inputs=("attention.self.key",))).apply(
            copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS)
        )
    with pytest.raises(UsageError, match="scale_outputs"):
        IA3Adapter(IA3Config()).apply(copy.deepcopy(base), ApplyPlan(10, ("query",)))


def test_count_and_output_at_init_match_peft():
    base = _base_model()
    ours = IA3Adapter(IA3Config())
    mine = ours.apply(copy.deepcopy(base), ApplyPlan(total_steps=10, targets=DEFAULT_TARGETS))
    cfg = peft.IA3Config(target_modules=PEFT_TARGETS, feedforward_modules=PEFT_FEEDFORWARD, task_type="SEQ_CLS")
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    # peft counts the head (modules_to_save) with the vectors.
    report = ours.param_report(mine)
    assert theirs.get_nb_trainable_parameters()[0] == report.adapter + report.head
    x = _inputs()
    assert torch.equal(mine(**x).logits, base(**x).logits)
    assert torch.allclose(mine(**x).logits, theirs(**x).logits, **TOL)
