"""choose_precision: forced values, `auto` on GPUs with and without bf16, and on CPUs with and without native
bf16 (detection mocked both ways), the probe's verdict and its per-machine cache. No timing is asserted."""

from __future__ import annotations

import json

import pytest
import torch

from peftbench.errors import UsageError
from peftbench.harness.run import precision as P

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "probe" / "cpu_bf16.json"))
    return tmp_path / "probe" / "cpu_bf16.json"


class FakeProbe:
    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self.calls = 0

    def __call__(self, *a, **kw) -> dict[str, float]:
        self.calls += 1
        return {"fp32_ms": 2.0, "bf16_ms": 2.0 / self.speedup, "speedup": self.speedup}


def _cpu(monkeypatch, flags: set[str], speedup: float | None) -> FakeProbe:
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(P, "cpu_model", lambda: "Test CPU 9000")
    probe = FakeProbe(speedup if speedup is not None else 1.0)
    if speedup is None:

        def never(*a, **kw):
            raise AssertionError("the probe ran on a CPU without native bf16")

        monkeypatch.setattr(P, "probe_bf16_speedup", never)
    else:
        monkeypatch.setattr(P, "probe_bf16_speedup", probe)
    return probe


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16", "bf16"])
def test_auto_on_native_cpu_is_bf16(monkeypatch, flag):
    probe = _cpu(monkeypatch, {"sse4_2", "avx2", flag}, speedup=6.1)
    choice = P.choose_precision("auto", CPU)
    assert choice.precision == "bf16" and choice.mixed_precision == "bf16"
    assert flag in choice.reason and "6.1x" in choice.reason
    assert probe.calls == 1


def test_auto_on_cpu_without_native_bf16_is_fp32_without_probing(monkeypatch):
    _cpu(monkeypatch, {"sse4_2", "avx2", "fma"}, speedup=None)
    monkeypatch.setattr(P, "cpu_capability", lambda: "avx2")
    choice = P.choose_precision("auto", CPU)
    assert choice.precision == "fp32" and choice.mixed_precision == "no"
    assert choice.reason == "auto: CPU without native bf16 (avx2), emulated bf16 is slower"


def test_auto_on_native_cpu_whose_probe_is_slow_is_fp32(monkeypatch):
    probe = _cpu(monkeypatch, {"avx512_bf16"}, speedup=1.2)
    choice = P.choose_precision("auto", CPU)
    assert choice.precision == "fp32"
    assert "1.2x" in choice.reason and "avx512_bf16" in choice.reason
    assert probe.calls == 1


def test_probe_is_cached_per_machine(monkeypatch, _probe_cache):
    probe = _cpu(monkeypatch, {"amx_bf16"}, speedup=5.0)
    assert P.choose_precision("auto", CPU).precision == "bf16"
    assert P.choose_precision("auto", CPU).precision == "bf16"
    assert probe.calls == 1  # the second call read the cache
    entries = json.loads(_probe_cache.read_text())
    [(key, value)] = entries.items()
    assert key.startswith("Test CPU 9000 | flags ") and key.endswith(f"torch {torch.__version__}")
    assert value["speedup"] == 5.0
    # Another kind of machine sharing the cache file (an NFS home) probes for itself and keeps both entries.
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    P.choose_precision("auto", CPU)
    assert probe.calls == 2
    assert len(json.loads(_probe_cache.read_text())) == 2


def test_a_broken_cache_file_is_probed_again(monkeypatch, _probe_cache):
    probe = _cpu(monkeypatch, {"amx_bf16"}, speedup=5.0)
    _probe_cache.parent.mkdir(parents=True)
    _probe_cache.write_text("{not json")
    assert P.choose_precision("auto", CPU).precision == "bf16"
    assert probe.calls == 1
    assert len(json.loads(_probe_cache.read_text())) == 1


def test_cache_location_follows_xdg_without_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv(P.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.probe_cache_path() == tmp_path / "xdg" / "peftbench" / "cpu_bf16.json"


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_forced_values_on_cpu_are_kept_without_probing(monkeypatch, requested):
    _cpu(monkeypatch, {"avx2"}, speedup=None)
    choice = P.choose_precision(requested, CPU)
    assert choice.precision == requested
    assert choice.reason.startswith(f"forced: precision={requested}")
    if requested == "bf16":
        assert "emulated" in choice.reason  # kept, but the record says it is the slow path


def test_fp16_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="fp16 needs a CUDA device") as e:
        P.choose_precision("fp16", CPU)
    assert "\n" not in str(e.value)


def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="'fp8' is not one of auto, fp32, bf16, fp16"):
        P.choose_precision("fp8", CPU)


def _gpu(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_cuda(monkeypatch, bf16):
    _gpu(monkeypatch, bf16)
    choice = P.choose_precision("auto", CUDA)
    if bf16:
        assert (choice.precision, choice.mixed_precision) == ("bf16", "bf16")
    else:
        assert (choice.precision, choice.mixed_precision) == ("fp16", "fp16")
        assert "loss scaling" in choice.reason


def test_forced_values_on_cuda(monkeypatch):
    _gpu(monkeypatch, bf16=False)
    assert P.choose_precision("fp16", CUDA).mixed_precision == "fp16"
    assert P.choose_precision("fp32", CUDA).mixed_precision == "no"
    forced = P.choose_precision("bf16", CUDA)
    assert forced.precision == "bf16" and "emulates bf16" in forced.reason


def test_the_real_probe_reports_both_timings():
    out = P.probe_bf16_speedup(size=64, repeats=2)
    assert set(out) == {"fp32_ms", "bf16_ms", "speedup"}
    assert out["fp32_ms"] > 0 and out["bf16_ms"] > 0 and out["speedup"] > 0
