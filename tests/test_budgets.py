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
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| sst2")]
    # The plan's columns changed with the honest tables (final and, for pruning methods, peak counts).
    assert ["sst2", "lora", "0.3M", "300,000", "290,304", "-3.2%"] in [c[:6] for c in cells]
    assert ["sst2", "full", "-", "-", "22,713,216"] in [c[:5] for c in cells]  # what it ends with, unbudgeted too
    assert "r=7" in out and "missing" in out
    assert out.count("| full ") == 2  # once per seed, whatever the budgets
    assert "not matched (> 5%): sst2/dora @ 45K" in out
    assert not (tmp_path / "runs").exists()


def test_unreachable_budget_fails_at_planning(capsys, tmp_path):
    code = main(["sweep", "--tasks", "sst2", "--methods", "lora", "--budgets", "1K", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "nearest achievable: 41.5K" in err
    assert not (tmp_path / "runs").exists()


def _plan_rows(out: str) -> list[dict[str, str]]:
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    return [dict(zip(header, (c.strip() for c in line.split("|")[1:-1]), strict=True)) for line in lines[2:]]


def test_dry_run_meets_an_adalora_budget_within_one_triplet_and_shows_its_peak(capsys, tmp_path):
    from peftbench.adapters.adalora.allocator import triplet_cost
    from peftbench.harness.run.plan import model_shape

    code = main(["sweep", "--tasks", "sst2", "--methods", "full,adalora", "--budgets", "0.3M", "--dry-run",
                 "--results", str(tmp_path)])  # fmt: skip
    assert code == 0
    rows = {r["method"]: r for r in _plan_rows(capsys.readouterr().out)}
    cfg = resolve(RunRequest(task="sst2", method="adalora", budget="0.3M"))
    biggest = max(triplet_cost(t) for t in model_shape(cfg.model, "sst2", cfg.train.targets).targets)
    final = int(rows["adalora"]["final adapter params"].replace(",", ""))
    assert abs(final - 300_000) < biggest and "budget_unit=params" in rows["adalora"]["hparams"]
    assert int(rows["adalora"]["peak adapter params"].replace(",", "")) > 1.4 * final
    assert rows["full"]["peak adapter params"] == "-"


def test_budget_and_a_set_of_the_knob_it_solves_is_an_error(capsys, tmp_path):
    for method, knob in (("lora", "r=16"), ("dora", "r=16"), ("adalora", "target_r=4"), ("adalora", "target_budget=9"),
                         ("vera", "r=64"), ("lora", "lora.r=16")):  # fmt: skip
        code = main(["sweep", "--tasks", "sst2", "--methods", method, "--budgets", "0.3M", "--set", knob,
                     "--dry-run", "--results", str(tmp_path)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --budget 0.3M solves") and err.count("\n") == 1, (method, err)
    # Without a budget the knob is the user's to set.
    assert main(["sweep", "--tasks", "sst2", "--methods", "lora", "--set", "r=16", "--dry-run",
                 "--results", str(tmp_path)]) == 0  # fmt: skip


def test_method_scoped_settings_in_a_sweep(capsys, tmp_path):
    argv = ["sweep", "--tasks", "sst2", "--methods", "full,adalora", "--budgets", "0.3M", "--dry-run",
            "--results", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--set", "t_init=0"]) == 2  # full has no t_init
    assert "unknown setting for full 't_init'" in capsys.readouterr().err
    assert main([*argv, "--set", "adalora.t_init=0", "--set", "full.lr=1e-5"]) == 0
    rows = {r["method"]: r for r in _plan_rows(capsys.readouterr().out)}
    assert "t_init=0" in rows["adalora"]["hparams"] and rows["full"]["hparams"] == "defaults"
    full = resolve(RunRequest(task="sst2", method="full", sets=("adalora.t_init=0", "full.lr=1e-5")))
    assert full.train.lr == 1e-5
    ada = resolve(RunRequest(task="sst2", method="adalora", budget="0.3M", sets=("adalora.t_init=0", "full.lr=1e-5")))
    assert ada.method_config["t_init"] == 0 and ada.train.lr != 1e-5
    for bad, needle in (("lorra.r=4", "unknown method 'lorra'"), ("lora.r=4", "which this command does not run")):
        assert main([*argv, "--set", bad]) == 2
        assert needle in capsys.readouterr().err
