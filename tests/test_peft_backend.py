"""peft as a second backend: the same targets and counts as the native methods, budgets within one knob step,
AdaLoRA's hooks, and the built-ins working without peft installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, find_targets
from peftbench.config import DEFAULT_TARGETS
from tests.conftest import tiny_bert_config

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
PLAN = ApplyPlan(total_steps=20, targets=DEFAULT_TARGETS)
PEFT_METHODS = [n for n in registry.adapters.names() if registry.adapters.get(n).implementation == "peft"]
BUDGETED = [n for n in PEFT_METHODS if registry.adapters.get(n).budgeted]


def _model(**kw):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=2, **kw)).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 900, (4, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}


def _adapted(name: str, **changes):
    cls = registry.adapters.get(name)
    config = cls.config_cls(**changes)
    adapter = cls(config)
    return adapter, adapter.apply(_model(), PLAN)


def test_the_required_methods_are_registered():
    wanted = {"peft-lora", "peft-dora", "peft-adalora", "peft-ia3", "peft-vera", "peft-loha", "peft-lokr", "peft-oft",
              "peft-fourierft", "peft-ln-tuning"}  # fmt: skip
    assert wanted <= set(PEFT_METHODS)
    for name in PEFT_METHODS:
        assert registry.adapters.get(name).name == name


@pytest.mark.parametrize("native, peft_name", [("lora", "peft-lora"), ("dora", "peft-dora")])
def test_same_rank_same_adapter_count_as_native(native, peft_name):
    counts = {}
    for name in (native, peft_name):
        adapter, model = _adapted(name, r=4)
        counts[name] = adapter.param_report(model)
    assert counts[native] == counts[peft_name]
    targets = find_targets(_model(), DEFAULT_TARGETS)
    cls = registry.adapters.get(peft_name)
    assert cls.adapter_count(targets, cls.config_cls(r=4)) == counts[native].adapter


def test_adalora_initial_count_same_as_native():
    """Like for like: both at init_r = 5 before any pruning, Σ init_r (d_in + d_out + 1)."""
    native, native_model = _adapted("adalora", init_r=5, target_r=2)
    ours, peft_model = _adapted("peft-adalora", init_r=5, target_r=2)
    a, b = native.param_report(native_model), ours.param_report(peft_model)
    targets = find_targets(_model(), DEFAULT_TARGETS)
    assert a.adapter_peak == b.adapter_peak == 5 * sum(t.d_in + t.d_out + 1 for t in targets)
    assert a.trainable == b.trainable and a.head == b.head
    cls = registry.adapters.get("peft-adalora")
    assert cls.peak_adapter_count(targets, cls.config_cls(init_r=5, target_r=2)) == b.adapter_peak


@pytest.mark.parametrize("native, peft_name", [("ia3", "peft-ia3"), ("vera", "peft-vera")])
def test_vectors_counted_as_native(native, peft_name):
    a, ma = _adapted(native)
    b, mb = _adapted(peft_name)
    assert a.param_report(ma) == b.param_report(mb)


def test_targets_are_the_native_ones_and_the_pooler_is_not_wrapped():
    adapter, model = _adapted("peft-lora")
    names = sorted(t.name for t in find_targets(_model(), DEFAULT_TARGETS))
    assert sorted(adapter.tuner.targeted_module_names) == names
    assert type(model.bert.pooler.dense) is nn.Linear
    assert not model.bert.pooler.dense.weight.requires_grad


def test_ln_tuning_trains_the_block_layernorms_only():
    adapter, model = _adapted("peft-ln-tuning")
    cfg = tiny_bert_config()
    report = adapter.param_report(model)
    assert report.adapter == cfg.num_hidden_layers * 2 * 2 * cfg.hidden_size
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())


@pytest.mark.parametrize("name", BUDGETED)
def test_budget_within_one_knob_step(name):
    """The solved count is one of the two counts adjacent knob values give on either side of the request."""
    cls = registry.adapters.get(name)
    targets = find_targets(_model(), DEFAULT_TARGETS)
    base = cls.config_cls()
    requested = 3 * sum(t.d_in + t.d_out for t in targets) + 17
    sol = cls.for_budget(targets, requested, base)
    below, above = sol.neighbours
    assert below <= requested <= above and sol.achieved in (below, above)
    values = list(cls.knob_values(targets, base))
    knob = cls.budget_knobs[0]
    i = values.index(getattr(sol.config, knob))
    near = {cls.adapter_count(targets, cls.with_knob(base, values[j], targets)) for j in (i - 1, i, i + 1)
            if 0 <= j < len(values)}  # fmt: skip
    assert {below, above} <= near
    assert cls.adapter_count(targets, sol.config) == sol.achieved


def test_unreachable_budget_names_the_nearest():
    from peftbench.errors import BudgetError

    cls = registry.adapters.get("peft-lora")
    targets = find_targets(_model(), DEFAULT_TARGETS)
    with pytest.raises(BudgetError, match="nearest achievable"):
        cls.for_budget(targets, 10**9, cls.config_cls())


def test_adalora_regulariser_is_extra_loss_not_inside_forward():
    torch.manual_seed(0)
    adapter, model = _adapted("peft-adalora", init_r=4, target_r=2, orth_reg_weight=0.5)
    model.train()
    out = model(**_batch())
    # The loss is the task's alone: cross-entropy of the logits, nothing added by peft.
    assert torch.allclose(out.loss, nn.functional.cross_entropy(out.logits, _batch()["labels"]))
    extra = adapter.extra_loss(model)
    layers = [model.get_submodule(n) for n in adapter.names]
    reg = 0.0
    for m in layers:
        a, b = m.lora_A["default"], m.lora_B["default"]
        reg = reg + torch.linalg.matrix_norm(a @ a.T - torch.eye(a.shape[0]))
        reg = reg + torch.linalg.matrix_norm(b.T @ b - torch.eye(b.shape[1]))
    assert torch.allclose(extra, 0.5 * reg / (2 * len(layers)))


def test_adalora_allocates_through_on_step_end():
    adapter, model = _adapted("peft-adalora", init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(PLAN.total_steps):
        out = model(**_batch())
        (out.loss + adapter.extra_loss(model)).backward()
        opt.step()
        adapter.on_step_end(model, step)
        opt.zero_grad(set_to_none=True)
    report = adapter.param_report(model)
    final = adapter.diagnostics()["final_ranks"]
    assert sum(final.values()) == 2 * len(final)  # peft's b(T): target_r triplets per matrix
    curve = adapter.diagnostics()["budget_curve"]
    assert curve[0] == [0, 4 * len(final)] and curve[-1] == [PLAN.total_steps - 1, 2 * len(final)]
    assert report.adapter < report.adapter_peak


def test_merge_keeps_outputs():
    adapter, model = _adapted("peft-lokr")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lokr_w2" in n:
                p.normal_(0, 0.1)
        before = model(**_batch()).logits
        after = adapter.merge(model)(**_batch()).logits
    assert torch.allclose(before, after, atol=1e-5)


# --- without peft -------------------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_builtins_never_import_peft():
    done = _python(
        """
        import sys
        from importlib import metadata
        for ep in metadata.entry_points(group="peftbench.adapters"):
            if "peft_backend" not in ep.value:
                ep.load()
        import peftbench.harness.cli, peftbench.harness.run.plan, peftbench.harness.run.runner
        assert "peft" not in sys.modules, sorted(m for m in sys.modules if m.startswith("peft."))[:5]
        """
    )
    assert done.returncode == 0, done.stderr


def test_without_peft_list_says_how_and_loading_is_one_line():
    done = _python(
        """
        import sys
        sys.modules["peft"] = None  # as if not installed
        from peftbench.harness.cli import main
        code = main(["list"])
        print("exit", code)
        code = main(["run", "--task", "sst2", "--method", "peft-lora"])
        print("exit", code)
        """
    )
    out = done.stdout
    assert "  lora " in out and "  vera " in out and "peft-lora" not in out
    hint = [line for line in out.splitlines() if "pip install 'peftbench[peft]'" in line]
    assert len(hint) == 1, out
    assert out.count("exit 0") == 1 and "exit 2" in out
    errors = done.stderr.strip().splitlines()
    assert errors == ["error: the peft-* methods need the optional peft package: pip install 'peftbench[peft]'"]


def test_a_run_records_the_peft_implementation_and_logs_the_regulariser_apart(tiny_model_dir, tmp_path):
    from tests.helpers import quick_run

    rec = quick_run(tiny_model_dir, tmp_path, method="peft-adalora", sets=("max_steps=6", "init_r=4", "target_r=2"))
    assert rec.ok and rec.implementation == "peft"
    assert rec.params.adapter_peak > rec.params.adapter > 0
    # [step, task loss, extra loss]: the regulariser is logged as the extra loss, not folded into the task loss.
    assert all(extra > 0 for _, _, extra in rec.train.loss_history)
    assert rec.diagnostics["final_ranks"] and rec.diagnostics["schedule"]["total_steps"] == 6


@pytest.mark.parametrize("name", [n for n in BUDGETED if registry.adapters.get(n).count_by_shape])
def test_counting_one_layer_per_shape_is_exact(name):
    """The fast count (one skeleton layer per distinct shape) equals peft's count over every layer."""
    from peftbench.adapters.peft_backend.budget import _count, peft_count

    cls = registry.adapters.get(name)
    targets = tuple(find_targets(_model(), DEFAULT_TARGETS))
    values = list(cls.knob_values(list(targets), cls.config_cls()))
    for v in (values[0], values[len(values) // 3]):
        config = cls.with_knob(cls.config_cls(), v, list(targets))
        assert peft_count(cls, targets, config) == _count(cls, targets, config)


@pytest.mark.slow
def test_every_budgeted_peft_method_meets_03M_on_minilm_within_one_knob_step():
    """The dry run's plan on the embedded MiniLM, then each solved config applied to a MiniLM-shaped model: peft's
    count on the real layers is the planned one."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from peftbench.harness.run.plan import RunRequest, model_shape, planned_adapter_count, resolve
    from tests.conftest import MINILM_DIR

    hf_config = AutoConfig.from_pretrained(MINILM_DIR, num_labels=2)
    for name in BUDGETED:
        cfg = resolve(RunRequest(task="sst2", method=name, budget="0.3M"))
        cls = registry.adapters.get(name)
        targets = list(model_shape(cfg.model, "sst2", cfg.train.targets).targets)
        sol = cls.for_budget(targets, 300_000, cls.config_cls())
        below, above = sol.neighbours
        assert below <= 300_000 <= above and planned_adapter_count(cfg) == sol.achieved, name
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(hf_config)
        adapter = cls(sol.config)
        adapter.apply(model, ApplyPlan(total_steps=100, targets=cfg.train.targets))
        report = adapter.param_report(model)
        assert (report.adapter_peak or report.adapter) == (cls.peak_adapter_count(targets, sol.config) or sol.achieved)
    lora = planned_adapter_count(resolve(RunRequest(task="sst2", method="lora", budget="0.3M")))
    assert lora == planned_adapter_count(resolve(RunRequest(task="sst2", method="peft-lora", budget="0.3M")))
