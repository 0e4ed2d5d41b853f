"""Bad input: one line on stderr naming the thing and what to do, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import gzip
import json
import types
from pathlib import Path

import pytest

from peftbench.harness.cli import main
from peftbench.records import load_record

FAST = ["--set", "max_steps=1", "--set", "train_rows=16", "--set", "eval_rows=8", "--quiet"]


def _write_sst2(root: Path, train_rows: list, val_rows: list | None = None) -> Path:
    d = root / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    if val_rows is not None:
        (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    return root


GOOD = [{"sentence": "a fine film", "label": 1, "idx": i} for i in range(4)]


def _fails(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["run", "--task", "sst3", "--method", "lora"], ["unknown task 'sst3'", "sst2"]),
        (["run", "--task", "sst2", "--method", "lorra"], ["unknown method 'lorra'", "did you mean lora"]),
        (["run", "--task", "sst2", "--method", "lora", "--model", "minilm-l12"], ["unknown model 'minilm-l12'"]),
        (["run", "--task", "sst2", "--method", "lora", "--set", "rank=4"], ["unknown setting for lora 'rank'"]),
        (["run", "--task", "sst2", "--method", "lora", "--set", "r=abc"], ["r expects an integer"]),
        (["run", "--task", "sst2", "--method", "lora", "--set", "lr"], ["--set expects key=value"]),
        (["run", "--task", "sst2", "--method", "lora", "--budget", "12Q"], ["malformed budget '12Q'"]),
        (["run", "--task", "sst2", "--method", "lora", "--budget=-3M"], ["malformed budget '-3M'"]),
        (["run", "--task", "sst2", "--method", "lora", "--budget", "1K"], ["nearest achievable"]),
        (["run", "--task", "sst2", "--method", "full", "--budget", "1M"], ["unbudgeted"]),
        (["run", "--task", "sst2", "--method", "lora", "--profile", "quik"], ["unknown profile 'quik'"]),
    ],
)
def test_bad_names_and_values(argv, needles, capsys, tmp_path):
    _fails(capsys, [*argv, "--results", str(tmp_path), *FAST], *needles)
    assert not (tmp_path / "runs").exists()


def test_model_path_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "notamodel").mkdir()
    _fails(
        capsys,
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tmp_path / "notamodel"),
            "--results",
            str(tmp_path),
            *FAST,
        ],
        "not a model directory",
    )


def test_data_dir_without_the_task(capsys, tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    _fails(
        capsys,
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "empty"),
            "--results",
            str(tmp_path),
            *FAST,
        ],
        "no glue/sst2/ folder",
    )


def test_data_dir_missing_a_split(capsys, tmp_path, tiny_model_dir):
    root = _write_sst2(tmp_path / "d", GOOD)
    _fails(
        capsys,
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--results",
            str(tmp_path),
            *FAST,
        ],
        "no validation.jsonl",
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"label": 1, "idx": 9}, "missing field 'sentence'"),
        ({"sentence": "   ", "label": 1, "idx": 9}, "empty or non-text field 'sentence'"),
        ({"sentence": "ok", "label": 7, "idx": 9}, "label 7 out of range 0..1"),
    ],
)
def test_bad_rows_are_named_by_file_and_line(bad, needle, capsys, tmp_path, tiny_model_dir):
    root = _write_sst2(tmp_path / "d", GOOD[:2] + [bad] + GOOD[2:], GOOD)
    err = _fails(
        capsys,
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--results",
            str(tmp_path),
            *FAST,
        ],
        needle,
    )
    assert "train.jsonl:3" in err
    assert not (tmp_path / "runs").exists()


def test_local_directory_source_runs(capsys, tmp_path, tiny_model_dir):
    root = _write_sst2(tmp_path / "d", GOOD * 4, GOOD)
    code = main(
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--results",
            str(tmp_path),
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    recs = list((tmp_path / "runs" / "sst2" / "lora").glob("*.json"))
    data = load_record(recs[0]).record.data
    assert data.source == str(root)
    assert data.train_rows == 16


def test_hub_source_uses_load_dataset(monkeypatch, capsys, tmp_path, tiny_model_dir):
    import datasets

    calls = []
    rows = {"train": GOOD * 4, "validation": GOOD}

    def fake_load(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    # Planning asks for the builder (metadata only) before the run takes its lock.
    info = types.SimpleNamespace(splits={"train": None, "validation": None, "test": None})
    monkeypatch.setattr(
        datasets, "load_dataset_builder", lambda path, name=None, **kw: types.SimpleNamespace(info=info)
    )
    code = main(
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            "hub",
            "--results",
            str(tmp_path),
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert ("nyu-mll/glue", "sst2", "train") in calls and ("nyu-mll/glue", "sst2", "validation") in calls


def test_hub_unreachable_is_a_clear_error(monkeypatch, capsys, tmp_path, tiny_model_dir):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    _fails(
        capsys,
        [
            "run",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--data",
            "hub",
            "--results",
            str(tmp_path),
            *FAST,
        ],
        "--data sample",
    )


def test_a_hub_dataset_without_a_needed_split_fails_before_the_lock(monkeypatch, capsys, tmp_path, tiny_model_dir):
    import datasets

    builder = types.SimpleNamespace(info=types.SimpleNamespace(splits={"train": None, "test": None}))
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda path, name=None, **kw: builder)
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--data", "hub"]
    _fails(capsys, [*argv, "--results", str(tmp_path / "results"), *FAST], "nyu-mll/glue sst2 has no split validation")
    assert not (tmp_path / "results").exists()


def test_offline_hub_run_leaves_no_lock_file(monkeypatch, capsys, tmp_path, tiny_model_dir):
    """With the network off, `--data hub` fails on one line before the run takes its lock: nothing is left in
    the results directory, and no lock file is created in the hub or datasets caches either."""
    import socket

    import datasets
    import huggingface_hub

    def no_network(*a, **k):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    caches = [Path(datasets.config.HF_DATASETS_CACHE), Path(huggingface_hub.constants.HF_HUB_CACHE)]

    def locks() -> set[Path]:
        return {p for c in caches if c.exists() for p in c.rglob("*.lock")}

    before = locks()
    results = tmp_path / "results"
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--data", "hub"]
    _fails(capsys, [*argv, "--results", str(results), *FAST], "from the hub", "--data sample")
    assert not results.exists(), sorted(results.rglob("*"))
    assert locks() == before
    sweep = ["sweep", "--tasks", "sst2", "--methods", "lora", "--model", str(tiny_model_dir), "--data", "hub"]
    _fails(capsys, [*sweep, "--results", str(results), *FAST], "from the hub")
    assert not results.exists(), sorted(results.rglob("*"))
    assert locks() == before


def test_list_prints_methods_and_tasks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "lora", "adalora", "dora", "sst2", "mnli", "squad_v2"):
        assert name in out


def test_gz_and_plain_jsonl_both_read(tmp_path):
    from peftbench import registry
    from peftbench.harness.run.data import load_rows

    d = tmp_path / "glue" / "sst2"
    d.mkdir(parents=True)
    with gzip.open(d / "train.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in GOOD))
    rows = load_rows(registry.tasks.get("sst2"), str(tmp_path), "train")
    assert rows == GOOD
