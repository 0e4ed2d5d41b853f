"""`--log-to tensorboard`: event files beside the record, read back with TensorBoard's own reader, one point per
logged step for the losses and the adapter's scalars and one per evaluation; a one-line error without the extra."""

from __future__ import annotations

import sys

import pytest

from peftbench.harness.cli import main
from peftbench.harness.run.trackers import check_trackers
from peftbench.records import load_record, tracker_dir
from tests.helpers import FAST

pytest.importorskip("tensorboard")

SETS = [f"--set={s}" for s in FAST] + ["--set=max_steps=8", "--set=eval_every=4", "--quiet"]
ADALORA = ["--set=init_r=4", "--set=target_r=2", "--set=t_init=2", "--set=t_final=2", "--set=delta_t=2"]


def _events(folder) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def _run(tmp_path, model_dir, method: str, extra: list[str]):
    results = tmp_path / "results"
    argv = ["run", "--task", "sst2", "--method", method, "--model", str(model_dir), "--results", str(results)]
    assert main([*argv, "--log-to", "tensorboard", *SETS, *extra]) == 0
    (path,) = (results / "runs" / "sst2" / method).glob("*.json")
    return load_record(path).record


def test_adalora_run_logs_losses_budget_and_evaluations(tmp_path, tiny_model_dir):
    rec = _run(tmp_path, tiny_model_dir, "adalora", ADALORA)
    folder = tracker_dir(rec.path, "tensorboard")
    assert folder == rec.path.with_name(rec.path.stem + ".tensorboard") and folder.is_dir()
    scalars = _events(folder)
    logged = [int(step) for step, _, _ in rec.train.loss_history]
    assert len(logged) == 8  # 8 steps, each one logged (a short run logs every step)
    for tag in ("train/loss", "train/extra_loss", "train/lr", "adapter/budget", "adapter/retained_triplets"):
        assert [e.step for e in scalars[tag]] == logged, tag
    # The values are the record's: the task loss, and the budget schedule b(t) the adapter followed.
    assert [round(e.value, 4) for e in scalars["train/loss"]] == [round(x[1], 4) for x in rec.train.loss_history]
    curve = dict(rec.diagnostics["budget_curve"])
    assert [e.value for e in scalars["adapter/budget"]] == [curve[s] for s in logged]
    # The learning rate each step used: linear warm-up (6% of 8 steps: none) then linear decay from the peak.
    lrs = [e.value for e in scalars["train/lr"]]
    assert lrs[0] == pytest.approx(4e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(4e-3 / 8)
    kept = [e.value for e in scalars["adapter/retained_triplets"]]
    assert kept[0] > kept[-1] == rec.diagnostics["final_triplets"]  # pruned while it trained
    assert [e.step for e in scalars["eval/accuracy"]] == [4, 8]  # eval_every=4, then the final evaluation
    assert scalars["eval/accuracy"][-1].value == pytest.approx(rec.metrics.primary)


def test_a_method_without_step_scalars_logs_losses_and_evaluations_only(tmp_path, tiny_model_dir):
    rec = _run(tmp_path, tiny_model_dir, "lora", [])
    scalars = _events(tracker_dir(rec.path, "tensorboard"))
    assert not [t for t in scalars if t.startswith("adapter/")]
    assert len(scalars["train/loss"]) == len(rec.train.loss_history)
    assert len(scalars["eval/accuracy"]) == 2
    # The same config run again (as after a failure) replaces the curves instead of drawing a second set.
    rec.path.unlink()
    _run(tmp_path, tiny_model_dir, "lora", [])
    folder = tracker_dir(rec.path, "tensorboard")
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert len(_events(folder)["train/loss"]) == len(rec.train.loss_history)


def test_sweep_children_log_too(tmp_path, tiny_model_dir):
    results = tmp_path / "results"
    argv = ["sweep", "--tasks", "sst2", "--methods", "lora", "--model", str(tiny_model_dir), "--executor", "inline"]
    assert main([*argv, "--results", str(results), "--log-to", "tensorboard", "--no-leaderboard", *SETS]) == 0
    (path,) = (results / "runs" / "sst2" / "lora").glob("*.json")
    assert "train/loss" in _events(tracker_dir(path, "tensorboard"))


def test_without_the_extra_it_says_what_to_install(monkeypatch, capsys, tmp_path, tiny_model_dir):
    for module in ("tensorboard", "tensorboardX"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec answers None
    results = tmp_path / "results"
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--results", str(results)]
    assert main([*argv, "--log-to", "tensorboard", *SETS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --log-to tensorboard needs the tensorboard package: pip install 'peftbench[tensorboard]'"
    assert not results.exists()


def test_unknown_tracker_names_the_known_ones():
    from peftbench.errors import UsageError

    with pytest.raises(UsageError, match="unknown tracker 'tensorbord'; did you mean tensorboard"):
        check_trackers(["tensorbord"])
    assert check_trackers(["tensorboard", "tensorboard"]) == ("tensorboard",)
