"""precision=auto resolved when a run is planned (so the config and its hash say what ran), recorded with its
reason, and --device checked before anything is written."""

from __future__ import annotations

import pytest

from peftbench.harness.cli import main
from peftbench.harness.run import precision as P
from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.records import load_record
from tests.helpers import FAST


def _cpu(monkeypatch, native: bool, speedup: float = 7.0) -> None:
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: (native, "amx_bf16" if native else "avx2 only"))
    monkeypatch.setattr(P, "cached_probe", lambda: {"speedup": speedup})


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "fp32")])
def test_auto_is_resolved_in_the_plan(native, want, monkeypatch, tiny_model_dir):
    _cpu(monkeypatch, native)
    cfg = resolve(RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=FAST, device="cpu"))
    assert cfg.train.precision == want
    forced = resolve(RunRequest(task="sst2", method="lora", model=str(tiny_model_dir), sets=(*FAST, "precision=fp32")))
    assert forced.train.precision == "fp32"
    if want == "bf16":
        assert forced.config_hash != cfg.config_hash  # a resumed sweep never mixes precisions


def test_the_record_says_which_precision_ran_and_why(monkeypatch, tiny_model_dir, tmp_path):
    _cpu(monkeypatch, True)
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--results", str(tmp_path),
            "--quiet", "--device", "cpu"] + [a for s in FAST for a in ("--set", s)]  # fmt: skip
    assert main(argv) == 0
    [path] = (tmp_path / "runs" / "sst2" / "lora").glob("*.json")
    rec = load_record(path).record
    assert rec.config.train.precision == "bf16"
    assert rec.env["precision"] == "bf16" and rec.env["precision_reason"].startswith("auto: CPU has native bf16")


def test_fp16_on_a_cpu_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    argv = ["run", "--task", "sst2", "--method", "lora", "--model", str(tiny_model_dir), "--results", str(tmp_path),
            "--device", "cpu", "--set", "precision=fp16"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "fp16 needs a CUDA device" in err and "\n" not in err


def test_device_cuda_without_cuda_is_one_line_exit_2(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cmd in (["run", "--task", "sst2", "--method", "lora"], ["sweep", "--tasks", "sst2", "--methods", "lora"]):
        argv = [*cmd, "--model", str(tiny_model_dir), "--results", str(tmp_path), "--device", "cuda"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --device cuda: no CUDA device") and "\n" not in err
    assert not (tmp_path / "runs").exists()
