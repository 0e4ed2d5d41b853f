"""Which precision a run trains in: what the user forced, or for `auto` bf16 wherever the hardware multiplies
bf16 natively. On a CPU that only emulates bf16 (converting to fp32 and back), bf16 is slower than fp32, so
`auto` checks the instruction set and then times a small matmul once per machine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from peftbench.errors import UsageError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# A matmul-only probe overstates what a whole training step gains (layer norms, softmax and casts stay in
# fp32), so bf16 has to win the probe clearly before `auto` picks it.
MIN_PROBE_SPEEDUP = 1.5
PROBE_SIZE = 512  # ~2 ms in fp32 on one core: the whole probe stays far below a second
PROBE_REPEATS = 7
PROBE_BUDGET_S = 0.3  # per dtype: an unexpectedly slow (emulated) bf16 must not stall the start of every run
# CPU flags that mean bf16 multiplies in hardware: Intel AMX and AVX512-BF16 (also AMD Zen 4), Arm's BF16
# extension (Graviton 3, Neoverse V1/N2).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
CACHE_ENV = "PEFTBENCH_CPU_PROBE_CACHE"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16
    reason: str  # one line for logs and the run record, e.g. "auto: CPU has native bf16 (amx_bf16), probe 7.0x"

    @property
    def mixed_precision(self) -> str:
        """accelerate's `mixed_precision` argument. With "fp16" accelerate also creates a GradScaler: its
        `backward` scales the loss and an optimizer passed through `accelerator.prepare` unscales, skips steps
        whose gradients overflowed and adjusts the scale; `clip_grad_norm_` unscales first."""
        return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[self.precision]


def choose_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision of a run on `device`. fp32/bf16/fp16 are taken as given (fp16 only on CUDA: without a
    GPU there is no loss scaling to keep its gradients from underflowing); `auto` picks bf16 on GPUs that
    support it, otherwise fp16 with loss scaling; on a CPU bf16 only when it is native and the probe confirms
    it is faster than fp32."""
    if requested not in PRECISIONS:
        raise UsageError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if requested == "fp16" and not cuda:
        raise UsageError(f"precision fp16 needs a CUDA device (this run is on {device.type}); use bf16, fp32 or auto")
    if requested != "auto":
        return PrecisionChoice(requested, f"forced: precision={requested}{_forced_note(requested, device)}")
    if cuda:
        if _cuda_bf16_native(device):
            return PrecisionChoice("bf16", f"auto: {_gpu_name(device)} supports bf16")
        return PrecisionChoice("fp16", f"auto: {_gpu_name(device)} has no native bf16; fp16 with loss scaling")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: no mixed precision on {device.type}")
    return _auto_cpu()


def _forced_note(precision: str, device: torch.device) -> str:
    if precision != "bf16":
        return ""
    if device.type == "cuda" and not _cuda_bf16_native(device):
        return f" ({_gpu_name(device)} emulates bf16: slower than fp16)"
    if device.type == "cpu" and not cpu_bf16_native()[0]:
        return f" (CPU without native bf16, {cpu_capability()}: emulated, slower than fp32)"
    return ""


def _cuda_bf16_native(device: torch.device) -> bool:
    try:
        # Recent torch counts emulated bf16 (pre-Ampere GPUs) as supported unless told not to.
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation counted in the first place
        return bool(torch.cuda.is_bf16_supported())


def _gpu_name(device: torch.device) -> str:
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        return "the GPU"


# CPU: detection, probe, cache


def cpu_capability() -> str:
    """torch's vector ISA level (AVX512, AVX2, DEFAULT, ...), lower-cased for messages."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "CPU part"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_native() -> tuple[bool, str]:
    """(native, evidence): whether the CPU multiplies bf16 in hardware, and the flag that says so (or the ISA
    level when none does). Without /proc/cpuinfo (macOS), torch's own CPU checks are asked."""
    flags = cpu_flags()
    for flag in NATIVE_BF16_FLAGS:
        if flag in flags:
            return True, flag
    if not flags:
        for name, label in (("_is_amx_tile_supported", "amx"), ("_is_avx512_bf16_supported", "avx512_bf16")):
            check = getattr(torch.cpu, name, None)
            if check is not None and check():
                return True, label
    return False, cpu_capability()


def probe_bf16_speedup(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """fp32 time / bf16 time of a size x size matmul on one thread (best of a few, after a warm-up). One
    thread, so runs sharing the machine disturb it less and the answer does not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
        fp32 = _best_time(lambda: a @ b, repeats)
        a16, b16 = a.bfloat16(), b.bfloat16()
        bf16 = _best_time(lambda: a16 @ b16, repeats)
    finally:
        torch.set_num_threads(threads)
    return {"fp32_ms": round(fp32 * 1e3, 4), "bf16_ms": round(bf16 * 1e3, 4), "speedup": round(fp32 / bf16, 2)}


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernel on the first call
    best = float("inf")
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > PROBE_BUDGET_S:
            break
    return max(best, 1e-9)


def probe_cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peftbench" / "cpu_bf16.json"


def probe_key() -> str:
    """One entry per CPU model, flag set and torch version: a home directory shared by different machines
    (a cluster's NFS home) keeps one result per kind of machine, and a new torch (new kernels) probes again."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    return f"{cpu_model()} | flags {flags} | torch {torch.__version__}"


def cached_probe() -> dict[str, float]:
    """The probe's result for this machine, measured on the first call and read from the cache after."""
    from peftbench.records import atomic_write_text

    path = probe_cache_path()
    key = probe_key()
    with _locked(path):
        # Under a lock: the runs of `sweep --jobs N` start together and would otherwise probe at once, each
        # timing the others' probes.
        entries = _read_cache(path)
        if key in entries:
            return entries[key]
        result = probe_bf16_speedup()
        log.info("CPU bf16 probe: %s (cached in %s)", result, path)
        entries[key] = result
        try:
            atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
        except OSError as e:  # a read-only home must not stop a run; it only probes again next time
            log.warning("could not cache the CPU bf16 probe in %s: %s", path, e)
        return result


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _locked:
    """An exclusive flock on `<path>.lock` where the OS has one; otherwise nothing (the cost is a second probe)."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> None:
        try:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.fd = None

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


def _auto_cpu() -> PrecisionChoice:
    native, evidence = cpu_bf16_native()
    if not native:
        return PrecisionChoice("fp32", f"auto: CPU without native bf16 ({evidence}), emulated bf16 is slower")
    probe = cached_probe()
    speedup = probe.get("speedup", 0.0)
    if speedup >= MIN_PROBE_SPEEDUP:
        return PrecisionChoice("bf16", f"auto: CPU has native bf16 ({evidence}), probe {speedup:.1f}x fp32")
    return PrecisionChoice(
        "fp32", f"auto: CPU has {evidence} but bf16 matmul is only {speedup:.1f}x fp32 (< {MIN_PROBE_SPEEDUP}x)"
    )
