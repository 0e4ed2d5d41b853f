"""The real training loop (run.train) as the runner drives it: the adapter's hooks, the logged losses, the
evaluation cadence, and evaluation that never merges an adapter."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench import registry
from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.lora import LoraAdapter
from peftbench.config import DEFAULT_TARGETS
from tests.conftest import tiny_bert_config
from tests.helpers import quick_run

EXTRA = 0.25


class _Probe(LoraAdapter):
    """LoRA plus a constant extra loss (no gradient), recording the steps its hook sees."""

    name = "probe"
    seen: list[int] = []

    def extra_loss(self, model):
        return torch.tensor(EXTRA)

    def on_step_end(self, model, step):
        type(self).seen.append(step)


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(registry.adapters._extra, "probe", _Probe)
    _Probe.seen = []
    return _Probe


def test_hook_runs_once_per_optimizer_step_under_accumulation(probe, tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, method="probe", sets=("grad_accum=2", "batch_size=8"))
    assert rec.ok, rec.error
    assert probe.seen == [0, 1, 2]  # 3 optimizer steps of 2 micro-batches each, not 6 calls
    assert rec.perf.train_examples == 3 * 2 * 8


def test_extra_loss_is_logged_apart_from_the_task_loss(probe, tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path / "probe", method="probe")
    plain = quick_run(tiny_model_dir, tmp_path / "lora", method="lora")
    assert rec.ok and plain.ok
    # A constant extra loss has no gradient: the task losses are LoRA's, and the extra column holds the constant.
    assert [h[1] for h in rec.train.loss_history] == [h[1] for h in plain.train.loss_history]
    assert all(h[2] == pytest.approx(EXTRA) for h in rec.train.loss_history)
    assert all(h[2] == 0.0 for h in plain.train.loss_history)


def test_eval_every_adds_points_to_the_history(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, sets=("max_steps=4", "eval_every=2"))
    assert rec.ok
    assert [h["step"] for h in rec.metrics.history] == [2, 4]
    assert rec.metrics.history[-1]["accuracy"] == rec.metrics.primary


@pytest.mark.parametrize("name", registry.adapters.names())
def test_eval_never_merges(name):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    cls = registry.adapters.get(name)
    model = cls(cls.config_cls()).apply(model, ApplyPlan(total_steps=20, targets=DEFAULT_TARGETS))
    with torch.no_grad():  # move the adapter off its identity start, so a merge would change W
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    before = copy.deepcopy(model.state_dict())
    ids = torch.randint(5, 900, (2, 7))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
