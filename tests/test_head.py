"""The linear probe: only the head trains, its adapter count is 0, and the harness takes a 0 all the way through
(planning, the run record, the leaderboard and the Pareto plot's reference band)."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.head import HeadAdapter, HeadConfig
from peftbench.config import DEFAULT_TARGETS
from peftbench.errors import BudgetError
from peftbench.harness.report.aggregate import runs_frame, summarize
from peftbench.harness.report.leaderboard import render
from peftbench.harness.report.plots import plot_pareto
from peftbench.harness.run.plan import RunRequest, planned_adapter_count, resolve
from tests.conftest import tiny_bert_config
from tests.helpers import quick_run


def test_only_the_head_trains_and_the_adapter_count_is_zero():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    adapter = HeadAdapter(HeadConfig())
    model = adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    report = adapter.param_report(model)
    assert report.adapter == 0 and report.trainable == report.head == 32 * 2 + 2
    assert HeadAdapter.adapter_count([], HeadConfig()) == 0
    ids = torch.randint(5, 900, (2, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_planning_treats_it_as_unbudgeted():
    cfg = resolve(RunRequest(task="sst2", method="head"))
    assert cfg.budget_requested is None and planned_adapter_count(cfg) == 0  # the dry run shows what it ends with
    with pytest.raises(BudgetError, match="unbudgeted"):
        resolve(RunRequest(task="sst2", method="head", budget="0.3M"))


@pytest.mark.slow
def test_a_run_records_zero_and_reports_render(tiny_model_dir, tmp_path):
    rec = quick_run(tiny_model_dir, tmp_path, method="head")
    # The typed record (schema 2): the achieved budget is params.adapter.
    assert rec.ok, rec.error
    assert rec.params.adapter == 0
    assert rec.params.trainable == rec.params.head > 0
    assert quick_run(tiny_model_dir, tmp_path, method="lora", budget="10K").ok
    summary = summarize(runs_frame(tmp_path))
    table = render(summary)
    assert "| head " in table and "0.0K" in table
    # head is a reference band (no budget), lora the one point on the log-scale axis.
    assert plot_pareto(summary, "sst2", tmp_path / "pareto.png")
