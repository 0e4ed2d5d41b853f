"""The bundled offline GLUE samples (peftbench/tasks/data/glue) and the script that makes them."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from peftbench import registry
from peftbench.tasks.base import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "peftbench" / "tasks" / "data"
GLUE_NAMES = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]

# Rows per bundled file, as stated in peftbench/tasks/data/README.md.
EXPECTED_ROWS = {
    ("cola", "train"): 8000, ("cola", "validation"): 1043,
    ("sst2", "train"): 8000, ("sst2", "validation"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408,
    ("qqp", "train"): 2000, ("qqp", "validation"): 2000,
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500,
    ("mnli", "train"): 3000, ("mnli", "validation_matched"): 2000, ("mnli", "validation_mismatched"): 2000,
    ("qnli", "train"): 3463, ("qnli", "validation"): 2000,
    ("rte", "train"): 2490, ("rte", "validation"): 277,
    ("wnli", "train"): 635, ("wnli", "validation"): 71,
}  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def sample_path(task: TaskSpec, split: str) -> Path:
    return DATA / task.local_dir / f"{split}.jsonl.gz"


def splits_with_caps(task: TaskSpec) -> list[tuple[str, int]]:
    evals = [(s.split, s.sample_rows) for s in task.eval_splits]
    return [(task.train_split, task.train_sample_rows), *evals]


@pytest.fixture(scope="module", params=GLUE_NAMES)
def task(request) -> TaskSpec:
    return registry.tasks.get(request.param)


def test_bundle_lists_exactly_the_expected_files():
    on_disk = {(p.parent.name, p.name.removesuffix(".jsonl.gz")) for p in (DATA / "glue").glob("*/*.jsonl.gz")}
    assert on_disk == set(EXPECTED_ROWS)
    planned = {(name, split) for name in GLUE_NAMES for split, _ in splits_with_caps(registry.tasks.get(name))}
    assert planned == set(EXPECTED_ROWS)


def test_rows_pass_the_task_checks_and_caps(task):
    for split, cap in splits_with_caps(task):
        path = sample_path(task, split)
        assert path.is_file(), path
        rows = read_rows(path)
        assert len(rows) == EXPECTED_ROWS[task.name, split]
        assert cap is not None and 0 < len(rows) <= cap
        for n, row in enumerate(rows, 1):
            assert task.check_row(row) is None, f"{path}:{n}: {task.check_row(row)}"
            # HF column order: text fields, label, idx.
            assert tuple(row) == (*task.required_fields(), "idx"), f"{path}:{n}"
            assert type(row["idx"]) is int
        idx = [r["idx"] for r in rows]
        assert idx == sorted(set(idx)), f"{path}: idx not unique and increasing"


def test_labels_in_range(task):
    for split, _ in splits_with_caps(task):
        labels = [r[task.label_field] for r in read_rows(sample_path(task, split))]
        if task.head == "regression":
            assert all(type(x) is float and 0.0 <= x <= 5.0 for x in labels)
            assert max(labels) - min(labels) > 4  # the whole 0..5 similarity scale is represented
        else:
            counts = Counter(labels)
            assert set(counts) == set(range(task.num_labels)), f"{split}: every class must occur: {counts}"
            assert all(type(x) is int for x in labels)


def test_subsampled_validation_keeps_label_shares():
    # mnli validation_matched source: 3479/3123/3213 of 9815 -> 2000 rows at the same shares (+-1 by rounding).
    rows = read_rows(sample_path(registry.tasks.get("mnli"), "validation_matched"))
    counts = Counter(r["label"] for r in rows)
    for label, source_count in {0: 3479, 1: 3123, 2: 3213}.items():
        assert abs(counts[label] - 2000 * source_count / 9815) <= 1


def test_qnli_train_and_validation_are_disjoint_parts_of_one_split():
    qnli = registry.tasks.get("qnli")
    train, val = read_rows(sample_path(qnli, "train")), read_rows(sample_path(qnli, "validation"))
    assert not {r["idx"] for r in train} & {r["idx"] for r in val}
    assert not {(r["question"], r["sentence"]) for r in train} & {(r["question"], r["sentence"]) for r in val}
    # Together they are the whole 5,463-row HF validation split (idx 0..5462).
    assert sorted(r["idx"] for r in train + val) == list(range(5463))


def test_files_are_byte_stable_gzip_and_within_size_budget():
    total = 0
    for path in (DATA / "glue").glob("*/*.jsonl.gz"):
        head = path.read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0", f"{path}: gzip mtime must be 0"
        assert head[3] & 0x08 == 0, f"{path}: no file name in the gzip header"
        total += path.stat().st_size
    assert total < 8 * 2**20
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 15 * 2**20


# --- the script, on a tiny synthetic source --------------------------------------------------------------


@pytest.fixture(scope="module")
def make_samples():
    name = "_make_samples_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_stratified_subset_keeps_shares_and_is_deterministic(make_samples):
    labels = [0] * 300 + [1] * 700
    chosen = make_samples.stratified_subset(labels, 200, "x", "validation")
    assert chosen == sorted(set(chosen)) and len(chosen) == 200
    assert Counter(labels[p] for p in chosen) == {0: 60, 1: 140}
    assert chosen == make_samples.stratified_subset(labels, 200, "x", "validation")
    assert chosen != make_samples.stratified_subset(labels, 200, "x", "other_split")
    # Labels 4/3/3 of 10 rows, 7 wanted: exact quotas 2.8, 2.1, 2.1 -> floors 2,2,2 and the leftover row goes
    # to the largest remainder (label 0) -> 3,2,2.
    labels = [0, 1, 2] * 3 + [0]
    three = make_samples.stratified_subset(labels, 7, "x", "v")
    assert Counter(labels[p] for p in three) == {0: 3, 1: 2, 2: 2}
    assert make_samples.stratified_subset([0, 1], 5, "x", "v") == [0, 1]


def fake_source(root: Path, make_samples, rows_per_file: int) -> None:
    for key in make_samples.SOURCE_SHA256:
        config, split = key.split("/")
        columns = make_samples.COLUMNS[config]
        path = root / "glue" / config / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(rows_per_file):
            label = i % 5 + 0.2 if config == "stsb" else i % (3 if config == "mnli" else 2)
            row = {c: f"{config} {split} {c} ünï {i}" for c in columns[:-2]} | {"label": label, "idx": i}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        path.write_text("".join(lines), encoding="utf-8")


def test_script_copies_source_lines_verbatim_and_reproducibly(tmp_path, make_samples, monkeypatch):
    monkeypatch.setattr(make_samples, "TRAIN_CAP", 7)
    monkeypatch.setattr(make_samples, "EVAL_CAP", 4)
    fake_source(tmp_path / "src", make_samples, rows_per_file=10)
    with pytest.raises(SystemExit, match="sha256"):
        make_samples.build(tmp_path / "src", tmp_path / "out0")
    summary = make_samples.build(tmp_path / "src", tmp_path / "out1", check_sha256=False)
    make_samples.build(tmp_path / "src", tmp_path / "out2", check_sha256=False)
    assert {s["file"] for s in summary} == {f"{c}/{s}.jsonl.gz" for c, s in EXPECTED_ROWS}
    for s in summary:
        out1, out2 = tmp_path / "out1" / s["file"], tmp_path / "out2" / s["file"]
        assert out1.read_bytes() == out2.read_bytes(), s["file"]
        source_lines = (tmp_path / "src" / s["source"]).read_bytes().splitlines(keepends=True)
        lines = gzip.decompress(out1.read_bytes()).splitlines(keepends=True)
        assert all(line in source_lines for line in lines)
        assert len(lines) == {"head": 7, "stratified": 4, "rest": 6}[s["how"]], s
    qnli = tmp_path / "out1" / "qnli"
    train = gzip.decompress((qnli / "train.jsonl.gz").read_bytes()).splitlines()
    val = gzip.decompress((qnli / "validation.jsonl.gz").read_bytes()).splitlines()
    assert not set(train) & set(val) and len(train) + len(val) == 10
