"""Inputs are data, never code: configs and records are JSON, `--set` takes literals, weights are safetensors.
And bad input to a sweep fails on one line with exit code 2 before anything trains."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import tokenize
from pathlib import Path

import pytest
import torch

from peftbench import registry
from peftbench.adapters.base import ApplyPlan
from peftbench.config import canonical_json, parse_value
from peftbench.errors import UsageError
from peftbench.harness.cli import main
from peftbench.harness.run import plan as plan_mod
from peftbench.harness.sweep import driver as sweep_mod
from peftbench.records import load_record

PACKAGE = Path(__file__).resolve().parents[1] / "peftbench"
SETS = ("train_rows=16", "eval_rows=8", "batch_size=8", "max_length=32", "eval_batch_size=16", "max_steps=2")


def _sets(*extra: str) -> list[str]:
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- no code from data --------------------------------------------------------------------------------------

FORBIDDEN = [
    (re.compile(r"(?<![\w.])eval\s*\("), "eval("),
    (re.compile(r"(?<![\w.])exec\s*\("), "exec("),
    (re.compile(r"\b(c?pickle|dill|marshal|shelve|joblib)\b"), "pickle-like deserialisation"),
    (re.compile(r"\byaml\.(load|unsafe_load|full_load)\s*\("), "yaml.load( (use yaml.safe_load)"),
    (re.compile(r"\btorch\.load\s*\((?!.*weights_only\s*=\s*True)"), "torch.load( without weights_only=True"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
]


def _code_only(source: str) -> list[str]:
    """The source with comments and string literals blanked: prose may say 'pickle', code may not."""
    rows = [list(line) for line in source.splitlines()]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            row = rows[r - 1]
            row[c0 if r == r0 else 0 : c1 if r == r1 else len(row)] = " " * (
                (c1 if r == r1 else len(row)) - (c0 if r == r0 else 0)
            )
    return ["".join(row) for row in rows]


def _offences(source: str, where: str = "") -> list[str]:
    return [
        f"{where}:{n}: {what}: {line.strip()}"
        for n, line in enumerate(_code_only(source), 1)
        for pattern, what in FORBIDDEN
        if pattern.search(line)
    ]


def test_package_source_never_turns_data_into_code():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offences = [o for f in files for o in _offences(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE.parent)))]
    assert offences == []


@pytest.mark.parametrize(
    "line, caught",
    [
        ("x = eval(s)", True),
        ("exec(code)", True),
        ("import pickle", True),
        ("cfg = yaml.load(f)", True),
        ("sd = torch.load(p)", True),
        ("sd = torch.load(p, map_location='cpu')", True),
        ("m = M.from_pretrained(p, trust_remote_code=True)", True),
        ("model.eval()", False),
        ("v = ast.literal_eval(raw)", False),
        ("cfg = yaml.safe_load(f)", False),
        ("sd = torch.load(p, weights_only=True)", False),
        ('doc = "never unpickle, never eval(x)"  # no pickle here', False),
    ],
)
def test_the_source_scan_catches_what_it_looks_for(line, caught):
    assert bool(_offences(line)) == caught


PAYLOAD = "__import__('pathlib').Path('{}').touch()"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_set_values_are_literals_never_code(command, tiny_model_dir, tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    payload = PAYLOAD.format(sentinel)
    assert parse_value(payload) == payload  # a plain string, not evaluated
    names = ["--task", "sst2", "--method", "lora"] if command == "run" else ["--tasks", "sst2", "--methods", "lora"]
    argv = [command, *names, "--model", str(tiny_model_dir), "--results", str(tmp_path), "--quiet"]
    assert main([*argv, *_sets(f"lr={payload}")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train setting lr expects a number") and "\n" not in err
    assert not sentinel.exists() and not (tmp_path / "runs").exists()


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_records_are_json_only_a_pickle_is_reported_not_run(tmp_path):
    from peftbench.harness.report.aggregate import runs_frame

    sentinel = tmp_path / "pwned"
    path = tmp_path / "runs" / "sst2" / "lora" / "0123456789abcdef.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(_Evil(sentinel)))
    rec = load_record(path)
    assert rec.record is None and rec.problem.startswith("unreadable record")
    assert runs_frame(tmp_path).empty
    assert not sentinel.exists()


def test_a_resolved_config_file_is_plain_json_into_typed_fields(tiny_model_dir, tmp_path):
    from peftbench.harness.run.plan import RunRequest, resolve

    cfg = resolve(RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=SETS))
    good = tmp_path / "good.json"
    good.write_text(canonical_json(cfg))
    assert plan_mod.load_resolved(str(good)) == cfg
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**json.loads(canonical_json(cfg)), "__class__": "os.system"}))
    with pytest.raises(UsageError, match="unexpected keyword argument '__class__'"):
        plan_mod.load_resolved(str(extra))
    code = tmp_path / "code.json"
    code.write_text(PAYLOAD.format(tmp_path / "pwned"))
    with pytest.raises(UsageError, match="cannot use resolved config .*JSONDecodeError"):
        plan_mod.load_resolved(str(code))
    assert not (tmp_path / "pwned").exists()


# --- adapter weights ----------------------------------------------------------------------------------------


def test_save_adapter_writes_safetensors_that_restore_the_trained_model(tiny_model_dir, tmp_path, capsys):
    """Methods peft does not load (here VeRA) keep peftbench's own layout; LoRA, DoRA and AdaLoRA are written in
    peft's (tests/test_peft_export.py)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from peftbench.harness.run.data import load_rows
    from peftbench.harness.run.plan import method_config_of
    from peftbench.harness.run.train import evaluate

    argv = ["run", "--task", "stsb", "--method", "vera", "--model", str(tiny_model_dir), "--results", str(tmp_path)]
    # fp32: the restored model is evaluated below without autocast, as the run was.
    assert main([*argv, "--quiet", "--save-adapter", *_sets(), "--set", "precision=fp32"]) == 0
    [path] = (tmp_path / "runs" / "stsb" / "vera").glob("*.json")
    weights = path.with_suffix(".adapter.safetensors")
    assert f"weights {weights.name}" in capsys.readouterr().out
    rec = load_record(path).record
    assert rec.adapter_file == weights.name
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["config_hash"] == path.stem and f.metadata()["method"] == "vera"

    cfg = rec.config
    task = registry.tasks.get("stsb")

    def fresh_model():
        torch.manual_seed(123)  # a head initialised unlike the run's
        model = task.model_class().from_pretrained(cfg.model.path, **task.model_kwargs())
        adapter = registry.adapters.get("vera")(method_config_of(cfg))
        return adapter.apply(model, ApplyPlan(total_steps=2, targets=cfg.train.targets))

    model = fresh_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tensors = load_file(str(weights))
    assert set(tensors) == trainable  # adapter and head, nothing frozen
    assert any(".vera_b" in n for n in tensors) and any(n.startswith("classifier.") for n in tensors)
    assert all(tensors[n].abs().sum() > 0 for n in tensors if n.endswith("vera_b"))  # trained (b starts at zero)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert unexpected == [] and trainable.isdisjoint(missing)

    # The restored model gives the run's own predictions back (regression scores: floats, not labels).
    rows = load_rows(task, "sample", "validation", cfg.train.eval_rows)
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    feats = task.featurize(rows, tok, cfg.train.max_length, False)

    def predictions(m):
        sets = {"validation": (feats, rows, "")}
        _, scored = evaluate(task, m, sets, cfg.train, tok.pad_token_id, torch.device("cpu"), contextlib.nullcontext)
        return scored["validation"].predictions

    recorded = json.loads(path.with_suffix(".preds.jsonl").read_text().splitlines()[0])["predictions"]
    assert predictions(model) == pytest.approx(recorded, rel=1e-5, abs=1e-6)
    assert predictions(fresh_model()) != pytest.approx(recorded, rel=1e-3)


# --- bad input to a sweep -----------------------------------------------------------------------------------


def _write_sst2(root: Path, train: list, validation: list | None) -> Path:
    d = root / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    if validation is not None:
        (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation))
    return root


GOOD = [{"sentence": "a fine film", "label": 1, "idx": i} for i in range(8)]


@pytest.fixture
def nothing_trains(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a run started despite bad input")

    monkeypatch.setattr(sweep_mod, "run_sweep", refuse)


def _sweep_fails(capsys, tmp_path, argv, *needles) -> str:
    code = main(["sweep", *argv, "--results", str(tmp_path / "res"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "res" / "runs").exists()
    return err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--tasks", "sst2,sst3", "--methods", "lora"], ["unknown task 'sst3'"]),
        (["--tasks", "sst2", "--methods", "lora,lorra"], ["unknown method 'lorra'", "did you mean lora"]),
        (["--tasks", "sst2", "--methods", "lora", "--model", "minilm-l12"], ["unknown model 'minilm-l12'"]),
        (["--tasks", "sst2", "--methods", "lora", "--budgets", "0.3M,12Q"], ["malformed budget '12Q'"]),
        (["--tasks", "sst2", "--methods", "lora", "--budgets=-3M"], ["malformed budget '-3M'"]),
        (["--tasks", "sst2", "--methods", "full,lora", "--budgets", "4K,100"], ["nearest achievable: 788"]),
        (["--tasks", "sst2", "--methods", "lora", "--set", "rank=4"], ["unknown setting for lora 'rank'"]),
        (["--tasks", "sst2", "--methods", "full,lora", "--set", "lr=fast"], ["lr expects a number, got 'fast'"]),
        (["--tasks", "sst2", "--methods", "lora", "--set", "r=1.5"], ["r expects an integer, got 1.5"]),
        (["--tasks", "sst2", "--methods", "lora", "--jobs", "0"], ["--jobs must be 1 or more"]),
        (["--tasks", ",", "--methods", "lora"], ["--tasks is empty"]),
    ],
)  # fmt: skip
def test_bad_sweep_arguments(argv, needles, nothing_trains, tiny_model_dir, capsys, tmp_path):
    model = [] if "--model" in argv else ["--model", str(tiny_model_dir)]
    _sweep_fails(capsys, tmp_path, [*argv, *model, *_sets()], *needles)


def test_sweep_model_path_that_is_not_a_model(nothing_trains, capsys, tmp_path):
    (tmp_path / "notamodel").mkdir()
    argv = ["--tasks", "sst2", "--methods", "lora", "--model", str(tmp_path / "notamodel"), *_sets()]
    _sweep_fails(capsys, tmp_path, argv, "not a model directory")


def test_sweep_data_directory_missing_a_split(nothing_trains, tiny_model_dir, capsys, tmp_path):
    root = _write_sst2(tmp_path / "d", GOOD, None)
    argv = ["--tasks", "sst2", "--methods", "lora", "--model", str(tiny_model_dir), "--data", str(root), *_sets()]
    _sweep_fails(capsys, tmp_path, argv, "no validation.jsonl")


@pytest.mark.parametrize(
    "split, bad, needle",
    [
        ("train", {"label": 1, "idx": 9}, "missing field 'sentence'"),
        ("train", {"sentence": "", "label": 1, "idx": 9}, "empty or non-text field 'sentence'"),
        ("train", {"sentence": "ok", "label": 2, "idx": 9}, "label 2 out of range 0..1"),
        ("validation", {"sentence": "ok", "label": -1, "idx": 9}, "label -1 out of range 0..1"),
    ],
)
def test_sweep_bad_rows_are_named_by_file_and_line_at_planning(
    split, bad, needle, nothing_trains, tiny_model_dir, capsys, tmp_path
):
    rows = {"train": GOOD, "validation": GOOD}
    rows[split] = GOOD[:2] + [bad] + GOOD[2:]
    root = _write_sst2(tmp_path / "d", rows["train"], rows["validation"])
    argv = ["--tasks", "sst2", "--methods", "full,lora", "--model", str(tiny_model_dir), "--data", str(root)]
    err = _sweep_fails(capsys, tmp_path, [*argv, *_sets()], needle)
    assert f"{split}.jsonl:3:" in err
