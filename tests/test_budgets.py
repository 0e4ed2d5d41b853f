"""Budget-matched planning: every method solves its hyper-parameters, the dry run shows requested vs achieved,
unreachable budgets fail before anything trains."""

from __future__ import annotations

import pytest

from peftbench.config import parse_budget
from peftbench.errors import UsageError
from peftbench.harness.cli import main
from peftbench.harness.run.plan import RunRequest, budget_mismatches, planned_adapter_count, resolve


@pytest.mark.parametrize(
    "spec, expected", [("0.3M", 300_000), ("150K", 150_000), ("20000", 20_000), ("1.5m", 1_500_000), ("2k", 2_000)]
)
def test_budget_forms(spec, expected):
    assert parse_budget(spec) == expected


def test_percentage_of_the_base_model():
    assert parse_budget("0.5%", base_params=22_000_000) == 110_000
    with pytest.raises(UsageError, match="percentage"):
        parse_budget("0.5%")


@pytest.mark.parametrize("bad", ["12Q", "-3M", "", "M", "1.2.3M", "0"])
def test_malformed_budgets(bad):
    with pytest.raises(UsageError):
        parse_budget(bad)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora", "adalora"])
def test_each_method_lands_within_five_percent_on_minilm(method):
    for spec in ("0.3M", "1.2M", "2%"):
        cfg = resolve(RunRequest(task="sst2", method=method, budget=spec))
        got = planned_adapter_count(cfg)
        assert abs(got - cfg.budget_requested) / cfg.budget_requested <= 0.05, (spec, got)
    assert budget_mismatches([resolve(RunRequest(task="sst2", method=method, budget="0.3M"))]) == []


def test_dry_run_prints_the_plan(capsys, tmp_path):
    code = main(["sweep", "--tasks", "sst2", "--methods", "full,lora,dora", "--budgets", "0.3M,45K", "--seeds", "0,1",
                 "--dry-run", "--results", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "| sst2   | lora     | 0.3M     | 300,000     | 290,304    | -3.2%" in out
    assert "r=7" in out and "missing" in out
    assert out.count("| full ") == 2  # once per seed, whatever the budgets
    assert "not matched (> 5%): sst2/dora @ 45K" in out
    assert not (tmp_path / "runs").exists()


def test_unreachable_budget_fails_at_planning(capsys, tmp_path):
    code = main(["sweep", "--tasks", "sst2", "--methods", "lora", "--budgets", "1K", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "nearest achievable: 41.5K" in err
    assert not (tmp_path / "runs").exists()
