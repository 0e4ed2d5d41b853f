"""The Python API takes the command line's path: the same configs (and hashes) from the same settings, the same
one-line errors raised before anything is written, the same records; and the README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import peftbench
from peftbench.errors import BudgetError, RunFailed, UsageError
from peftbench.harness import api
from peftbench.harness.cli import main
from peftbench.harness.run.plan import RunRequest
from peftbench.records import load_record
from tests.helpers import FAST

ROOT = Path(__file__).resolve().parents[1]
# The FAST settings as keyword arguments: max_steps=3, train_rows=48, ...
FAST_KW = {k: int(v) for k, v in (s.split("=") for s in FAST)}


def _hash(method: str, settings=None, **kw) -> str:
    sets = api.settings_items(settings, kw)
    return api.prepare_run(RunRequest(task="sst2", method=method, sets=FAST + sets)).config_hash


def test_every_spelling_of_a_setting_is_the_same_config():
    cli = _hash("lora", ["r=4", "lora.alpha=8", "lr=0.0005", "targets=query,value"])
    assert _hash("lora", r=4, lora__alpha=8.0, lr=5e-4, targets=("query", "value")) == cli
    assert _hash("lora", {"r": 4, "lora.alpha": 8, "train.lr": 5e-4, "targets": "query,value"}) == cli
    assert _hash("lora", {"lora.r": 4}, method__alpha=8, train__lr=5e-4, targets=["query", "value"]) == cli
    assert _hash("lora", r=8) != cli


def test_numpy_values_are_plain_numbers():
    np = pytest.importorskip("numpy")
    assert _hash("lora", r=np.int64(4), lr=np.float64(5e-4)) == _hash("lora", r=4, lr=5e-4)


RUN = dict(task="sst2", method="lora")
SWEEP = dict(tasks="sst2", methods="lora")


@pytest.mark.parametrize(
    "call, argv",
    [
        (dict(task="sst3", method="lora"), "run --task sst3 --method lora"),
        (dict(task="sst2", method="lorra"), "run --task sst2 --method lorra"),
        (dict(RUN, rank=4), "run --task sst2 --method lora --set rank=4"),
        (dict(RUN, r="abc"), "run --task sst2 --method lora --set r=abc"),
        (dict(RUN, budget="12Q"), "run --task sst2 --method lora --budget 12Q"),
        (dict(RUN, budget=100), "run --task sst2 --method lora --budget 100"),
        (dict(task="sst2", method="full", budget=10**6), "run --task sst2 --method full --budget 1000000"),
        (dict(RUN, profile="quik"), "run --task sst2 --method lora --profile quik"),
        (dict(RUN, adalora__t_init=0), "run --task sst2 --method lora --set adalora.t_init=0"),
        (dict(RUN, log_to="tensorbord"), "run --task sst2 --method lora --log-to tensorbord"),
        (dict(SWEEP, jobs=0), "sweep --tasks sst2 --methods lora --jobs 0"),
        (dict(tasks="sst2", methods=[]), "sweep --tasks sst2 --methods ,"),
        (dict(SWEEP, set={"dora.r": 4}), "sweep --tasks sst2 --methods lora --set dora.r=4"),
        (dict(SWEEP, budgets=["0.3Q"]), "sweep --tasks sst2 --methods lora --budgets 0.3Q"),
    ],
)
def test_bad_input_raises_what_the_cli_prints(call, argv, tmp_path, capsys, tiny_model_dir):
    results = tmp_path / "results"
    common = dict(model=str(tiny_model_dir), results=results)
    fn = peftbench.sweep if argv.startswith("sweep") else peftbench.run
    with pytest.raises(UsageError) as raised:
        fn(**common, **call)
    assert main([*argv.split(), "--model", str(tiny_model_dir), "--results", str(results)]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed == f"error: {raised.value}"
    assert "\n" not in printed
    assert not results.exists()


def test_an_unreachable_budget_is_a_budget_error(tiny_model_dir, tmp_path):
    with pytest.raises(BudgetError, match="nearest achievable"):
        peftbench.run("sst2", "lora", "100", model=tiny_model_dir, results=tmp_path)


def test_run_returns_the_record_it_wrote_and_the_cli_would_write(tiny_model_dir, tmp_path, capsys):
    rec = peftbench.run("sst2", "lora", "1%", seed=1, model=tiny_model_dir, results=tmp_path, **FAST_KW)
    assert rec.ok and rec.path.is_file()
    assert load_record(rec.path).record == rec
    assert (rec.config.seed, rec.config.budget) == (1, "1%")
    # The same request on the command line is the same config: it writes to the same record.
    argv = "run --task sst2 --method lora --budget 1% --seed 1 --quiet".split()
    sets = [f"--set={s}" for s in FAST]
    assert main([*argv, *sets, "--model", str(tiny_model_dir), "--results", str(tmp_path / "cli")]) == 0
    assert f"record {tmp_path / 'cli' / rec.path.relative_to(tmp_path)}" in capsys.readouterr().out


def test_a_run_that_fails_raises_with_its_record(tiny_model_dir, tmp_path):
    with pytest.raises(RunFailed, match=r"^run failed: training diverged at step \d+") as raised:
        peftbench.run("sst2", "lora", model=tiny_model_dir, results=tmp_path, lr=1e30, **FAST_KW)
    rec = raised.value.record
    assert rec.status == "failed" and rec.path.is_file()
    assert str(raised.value) == f"run failed: {rec.error} (record: {rec.path})"


def test_sweep_returns_one_row_per_config_and_skips_what_is_done(tiny_model_dir, tmp_path):
    kw = dict(model=tiny_model_dir, results=tmp_path, executor="inline", **FAST_KW)
    df = peftbench.sweep("sst2", "lora,head", budgets="1%", seeds=[0, 1], **kw)
    assert sorted(zip(df["method"], df["seed"], strict=True)) == [("head", 0), ("head", 1), ("lora", 0), ("lora", 1)]
    assert list(df.columns[:7]) == ["task", "method", "budget", "seed", "status", "primary_name", "primary"]
    assert {"metric.accuracy", "adapter", "trainable", "train_seconds", "config_hash", "record"} <= set(df.columns)
    assert (df["status"] == "ok").all() and df["ran"].all()
    assert set(df.loc[df["method"] == "head", "budget"]) == {"-"}  # unbudgeted: once per seed, as on the CLI
    for _, row in df.iterrows():
        rec = load_record(row["record"]).record
        assert (rec.metrics.primary, rec.params.adapter, rec.config_hash) == (row["primary"], row["adapter"],
                                                                              row["config_hash"])  # fmt: skip
    again = peftbench.sweep(["sst2"], ["lora", "head"], budgets=["1%"], seeds="0,1", **kw)
    assert not again["ran"].any()
    assert again["primary"].tolist() == df["primary"].tolist()


def test_sweep_rows_of_failed_runs_say_why(tiny_model_dir, tmp_path):
    df = peftbench.sweep("sst2", "lora", model=tiny_model_dir, results=tmp_path, executor="inline", lr=1e30, **FAST_KW)
    (row,) = df.to_dict("records")
    assert row["status"] == "failed" and "training diverged" in row["error"] and row["ran"]


def test_import_peftbench_stays_cheap():
    # Reaching the API's functions loads the API module, still not torch nor pandas.
    code = (
        "import sys, peftbench; peftbench.run; peftbench.sweep; print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"### Example\n\n```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # the sweep's runs are child processes
def test_the_readme_example_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    code = _readme_example()
    line = 'model = "minilm-l6"'
    assert line in code  # the one line the test changes: the embedded MiniLM for a tiny BERT
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(line, f"model = {str(tiny_model_dir)!r}"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^accuracy 0\.\d{3}, [\d,]+ adapter params, results/runs/sst2/lora/\w+\.json$", out, re.M), out
    records = sorted((tmp_path / "results" / "runs" / "sst2").glob("*/*.json"))
    assert sorted(p.parent.name for p in records) == ["adalora", "lora"]
