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


def test_the_optimizer_is_fused_adamw_and_the_record_names_it(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path)
    assert rec.ok, rec.error
    assert rec.env["optimizer"] == "AdamW (fused)"


def test_fused_adamw_makes_adamw_s_update():
    from peftbench.harness.run.train import adamw

    torch.manual_seed(0)
    ours = [torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True)]
    ref = [p.detach().clone().requires_grad_(True) for p in ours]
    start = [p.detach().clone() for p in ours]
    opt = adamw(
        [{"params": ours[:1], "lr": 1e-2, "weight_decay": 0.1}, {"params": ours[1:], "lr": 3e-2, "weight_decay": 0.0}]
    )
    assert opt.defaults["fused"] is True
    ref_opt = torch.optim.AdamW(
        [{"params": ref[:1], "lr": 1e-2, "weight_decay": 0.1}, {"params": ref[1:], "lr": 3e-2, "weight_decay": 0.0}]
    )
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, ref, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q, p0 in zip(ours, ref, start, strict=True):
        assert (p != p0).all()
        # The same update up to rounding order: float32's resolution at the weights' size, not a looser match.
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_adamw_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    from peftbench.harness.run import train as train_mod

    real = torch.optim.AdamW

    def no_fused(params, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = train_mod.adamw([torch.zeros(3, requires_grad=True)], lr=0.1)
    assert not opt.defaults.get("fused")
    assert train_mod.optimizer_name(opt) == "AdamW (loop)"


def test_the_optimizer_name_sees_through_accelerate_s_wrapper():
    from accelerate.optimizer import AcceleratedOptimizer

    from peftbench.harness.run.train import adamw, optimizer_name

    wrapped = AcceleratedOptimizer(adamw([torch.zeros(3, requires_grad=True)], lr=0.1), device_placement=False)
    assert optimizer_name(wrapped) == "AdamW (fused)"
