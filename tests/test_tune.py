"""`peftbench tune` and recipes: grid points scored on the dev split, the best written with its provenance,
and the profile reading it back (under the user's --set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.errors import UsageError
from peftbench.harness.cli import main
from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.harness.tune.choose import GridPoint, best, record_choice, stable_best, unstable
from peftbench.harness.tune.cmd import method_grid, parse_grid
from peftbench.harness.tune.table import recipe_table
from peftbench.recipes import Recipe, load_recipe, recipe_from_dict, recipe_to_dict
from tests.helpers import FAST


def _pt(lr, *scores):
    return GridPoint("sst2", "lora", {"lr": lr}, tuple(scores))


def test_best_is_the_highest_mean_and_ties_keep_grid_order():
    pts = [_pt(1e-3, 0.80, 0.82), _pt(2e-3, 0.83, 0.79), _pt(4e-3, 0.85, 0.77)]
    assert best(pts).values == {"lr": 1e-3}  # 0.81 three ways: the first
    pts.append(_pt(8e-3, 0.9))
    assert best(pts).values == {"lr": 8e-3}
    assert best([_pt(1e-3, 0.5), _pt(2e-3, 0.4)], higher_is_better=False).values == {"lr": 2e-3}
    assert best([_pt(1e-3)]) is None


def test_record_choice_keeps_grid_and_dev_scores():
    pts = [_pt(5e-4, 0.70), _pt(1e-3, 0.75), _pt(2e-3, 0.60)]
    r = record_choice(Recipe("standard", 1, {}, {}, {}), "sst2", "lora", pts, best(pts), dev_rows=500, seeds=[0],
                      budget="0.3M", metric="accuracy")  # fmt: skip
    c = r.chosen("sst2", "lora")["lr"]
    assert c.value == 1e-3 and c.grid == (5e-4, 1e-3, 2e-3) and c.spread() == (0.60, 0.75)
    assert c.dev == {"0.0005": 0.7, "0.001": 0.75, "0.002": 0.6}
    back = recipe_from_dict(json.loads(json.dumps(recipe_to_dict(r))))
    assert back.chosen("sst2", "lora")["lr"] == c
    assert "0.6000 – 0.7500" in recipe_table(back)


def test_grid_parsing_and_scoping():
    g = parse_grid(["lr=1e-4,1e-3", "adalora.orth_reg_weight=0.1,0.5"])
    assert g == {"lr": [1e-4, 1e-3], "adalora.orth_reg_weight": [0.1, 0.5]}
    assert method_grid("lora", g) == {"lr": [1e-4, 1e-3]}
    assert method_grid("adalora", g) == {"lr": [1e-4, 1e-3], "orth_reg_weight": [0.1, 0.5]}
    assert method_grid("full", {}) == {"lr": [5e-5, 1e-4, 2e-4]}  # the method's declared grid
    with pytest.raises(UsageError, match="solved from the budget"):
        method_grid("lora", {"r": [4, 8]})
    with pytest.raises(UsageError, match="KEY=V1,V2"):
        parse_grid(["lr"])


def _write_recipe(path: Path, lr: float) -> None:
    path.write_text(json.dumps({
        "schema": 1, "profile": "quick", "version": 1, "tuned_on": {}, "sources": {},
        "tasks": {"sst2": {"train": {"batch_size": 8}, "methods": {"lora": {"lr": {"value": lr, "grid": [lr]}}}}},
    }))  # fmt: skip


def test_profile_reads_its_recipe_under_the_users_set(tiny_model_dir, tmp_path, monkeypatch):
    import peftbench.recipes as recipes

    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    _write_recipe(tmp_path / "quick.json", 3e-3)
    cfg = resolve(RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=("max_steps=2",)))
    assert cfg.train.lr == 3e-3 and cfg.train.batch_size == 8
    cfg = resolve(RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=("max_steps=2", "lr=1e-2")))
    assert cfg.train.lr == 1e-2
    other = resolve(RunRequest(task="sst2", method="dora", model=str(tiny_model_dir), sets=("max_steps=2",)))
    assert other.train.lr == 1e-3 and other.train.batch_size == 8  # task settings for every method, lr only lora's


def test_a_broken_recipe_is_a_one_line_error(tmp_path):
    bad = tmp_path / "standard.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="restore it from git"):
        load_recipe("standard", bad)


def test_tune_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    argv = ["tune", "--tasks", "sst2", "--methods", "lora,full", "--grid", "lr=1e-3,1e-2", "--grid", "full.lr=1e-4",
            "--dev-rows", "40", "--model", str(tiny_model_dir), "--profile", "quick", "--results", str(tmp_path / "r"),
            "--recipe", str(recipe), "--write", "--quiet", "--budget", "2K"]  # fmt: skip
    for s in FAST:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| sst2 | lora | lr=0.001 |" in out and "| sst2 | full | lr=0.0001 |" in out
    r = load_recipe("quick", recipe)
    lora = r.chosen("sst2", "lora")["lr"]
    assert lora.grid == (1e-3, 1e-2) and set(lora.dev) == {"0.001", "0.01"} and lora.dev_rows == 40
    assert lora.value in (1e-3, 1e-2) and lora.budget == "2K"
    # Every tuning record was scored on dev rows, never on validation.
    records = list((tmp_path / "r").rglob("*.json"))
    assert len(records) == 3
    for f in records:
        d = json.loads(f.read_text())
        assert list(d["data"]["eval_rows_per_split"]) == ["dev"] and d["config"]["train"]["dev_rows"] == 40
    # A second tune reruns nothing and chooses the same.
    assert main(argv) == 0
    assert load_recipe("quick", recipe).chosen("sst2", "lora")["lr"] == lora


def _c(lr, score, *collapsed):
    return GridPoint("mnli", "lora", {"lr": lr}, (score,), tuple(collapsed))


def test_stability_rule_sets_aside_the_rate_below_a_collapse():
    # The quick MNLI grid as measured: 1.4e-3 won on dev right below 2e-3, which collapsed on both seeds.
    pts = [_c(7e-4, 0.571), _c(1e-3, 0.564), _c(1.4e-3, 0.582), _c(2e-3, 0.306, 0, 1)]
    assert best(pts).values == {"lr": 1.4e-3}
    rejected = unstable(pts)
    assert set(rejected) == {2, 3}
    assert "next lr up (0.002)" in rejected[2] and "seed 0,1 did not learn" in rejected[3]
    winner, aside = stable_best(pts)
    assert winner.values == {"lr": 7e-4} and aside == rejected
    # The top of the grid has nothing above it; a collapse two steps up is not "the next one".
    assert unstable([_c(1e-3, 0.5), _c(2e-3, 0.6)]) == {}
    assert set(unstable([_c(5e-4, 0.5), _c(1e-3, 0.6), _c(2e-3, 0.3, 2)])) == {1, 2}


def test_stability_rule_only_compares_rates_with_everything_else_equal():
    pts = [
        GridPoint("sst2", "adalora", {"lr": 1e-3, "orth_reg_weight": 0.1}, (0.8,)),
        GridPoint("sst2", "adalora", {"lr": 1e-3, "orth_reg_weight": 0.5}, (0.7,), (0,)),
        GridPoint("sst2", "adalora", {"lr": 2e-3, "orth_reg_weight": 0.1}, (0.85,)),
        GridPoint("sst2", "adalora", {"lr": 2e-3, "orth_reg_weight": 0.5}, (0.9,)),
    ]
    # Point 1 collapsed itself; point 0's next rate up (point 2) learned, and a larger orth_reg_weight is not a
    # step toward divergence.
    assert set(unstable(pts)) == {1}
    assert stable_best(pts)[0].values == {"lr": 2e-3, "orth_reg_weight": 0.5}


def test_when_nothing_is_stable_the_plain_best_is_kept():
    pts = [_c(1e-3, 0.0, 0), _c(2e-3, 0.02, 0)]  # CoLA: every rate at MCC 0
    assert stable_best(pts) == (pts[1], {})


def test_set_aside_values_are_recorded_and_marked():
    pts = [_c(7e-4, 0.571), _c(1e-3, 0.564), _c(1.4e-3, 0.582), _c(2e-3, 0.306, 0, 1)]
    winner, rejected = stable_best(pts)
    r = record_choice(Recipe("quick", 1, {}, {}, {}), "mnli", "lora", pts, winner, dev_rows=500, seeds=[0, 1],
                      budget="0.3M", metric="accuracy", rejected=rejected)  # fmt: skip
    c = r.chosen("mnli", "lora")["lr"]
    assert c.value == 7e-4 and set(c.unstable) == {"0.0014", "0.002"}
    back = recipe_from_dict(json.loads(json.dumps(recipe_to_dict(r))))
    assert back.chosen("mnli", "lora")["lr"] == c
    assert "0.0007, 0.001, 0.0014 ✗, 0.002 ✗" in recipe_table(back)
    # A choice with nothing set aside writes no `unstable` key (recipes tuned before the rule read back the same).
    plain = record_choice(Recipe("quick", 1, {}, {}, {}), "mnli", "lora", pts[:2], pts[0], dev_rows=500, seeds=[0],
                          budget="0.3M", metric="accuracy")  # fmt: skip
    assert "unstable" not in recipe_to_dict(plain)["tasks"]["mnli"]["methods"]["lora"]["lr"]


def test_learned_on_dev_tests_each_run_against_its_trivial_baseline(tiny_model_dir, tmp_path):
    from peftbench import registry
    from peftbench.harness.tune.stability import collapsed_seeds, learned_on_dev

    argv = ["tune", "--tasks", "sst2", "--methods", "lora", "--grid", "lr=1e-3", "--seeds", "0,1", "--dev-rows", "60",
            "--model", str(tiny_model_dir), "--profile", "quick", "--results", str(tmp_path / "r"),
            "--recipe", str(tmp_path / "recipe.json"), "--quiet", "--budget", "2K"]  # fmt: skip
    for s in FAST:
        argv += ["--set", s]
    assert main(argv) == 0
    task = registry.tasks.get("sst2")
    records = sorted((tmp_path / "r").rglob("*.preds.jsonl"))
    assert len(records) == 2
    by_seed = {}
    for preds_file in records:
        record = preds_file.with_name(preds_file.name.replace(".preds.jsonl", ".json"))
        seed = json.loads(record.read_text())["config"]["seed"]
        by_seed[seed] = record
        entry = json.loads(preds_file.read_text().splitlines()[0])
        refs = entry["references"]
        # Rewrite the stored predictions: the right answers learn; one class for every row does not.
        preds_file.write_text(json.dumps({**entry, "predictions": refs}) + "\n")
        assert learned_on_dev(task, record) is True
        majority = max(set(refs), key=refs.count)
        preds_file.write_text(json.dumps({**entry, "predictions": [majority] * len(refs)}) + "\n")
        assert learned_on_dev(task, record) is False
    preds_file.write_text(json.dumps({**entry, "predictions": refs}) + "\n")  # the last seed learns again
    assert collapsed_seeds(task, by_seed) == tuple(s for s in by_seed if by_seed[s] != record)
    preds_file.unlink()
    assert learned_on_dev(task, record) is None  # no predictions: untestable, never "collapsed"
