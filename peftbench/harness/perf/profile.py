"""`peftbench perf`: the measuring tools. Peak memory of a few steps (CUDA's allocator statistics, or torch's
own allocation records on CPU) and a per-op profile of one step against the floor's."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peftbench.harness.perf.steps import MethodRun

log = logging.getLogger(__name__)


class PeakAllocated:
    """Peak bytes torch allocated above the level at entry. CUDA: the caching allocator's max_memory_allocated.
    CPU: torch's own allocation records (the profiler's memory events, alloc and free, in time order), so the
    count is of tensors (weights, gradients, optimizer state, saved activations, temporaries), not of RSS,
    which on a shared process would mix every method's pages and the allocator's caching."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._prof = None
        self._start = 0

    def __enter__(self) -> PeakAllocated:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with quiet_stderr():
                self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        with quiet_stderr():
            self._prof.__exit__(*exc)
        try:
            self.peak = _profiled_peak(self._prof)
        except Exception as e:  # noqa: BLE001 - a private profiler API: no number rather than a crash
            log.warning("cannot read CPU allocation records (%s); peak memory not measured", e)


@contextlib.contextmanager
def quiet_stderr():
    """Kineto writes a line to the process's stderr at every profiler start and stop; silence just those."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _profiled_peak(prof) -> int:
    from torch._C._profiler import _EventType

    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and str(e.typed[1].device).startswith("cpu"):
            events.append((e.start_time_ns, e.typed[1].alloc_size))
        stack.extend(e.children)
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return peak


def profile_diff(run: MethodRun, floor: MethodRun, batch: dict[str, torch.Tensor], top: int = 8) -> list[dict]:
    """One profiled step of `run` and of the floor: the ops where `run` spends the most extra self time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = batch["input_ids"].device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    totals = []
    for r in (run, floor):
        prof = profile(activities=activities)
        with quiet_stderr():
            prof.__enter__()
        try:
            r.step_fn(batch, r.steps_taken)
            if cuda:
                torch.cuda.synchronize()
        finally:
            with quiet_stderr():
                prof.__exit__(None, None, None)
        r.steps_taken += 1
        # Self time per op: the device's on a GPU, the CPU's (wall clock of the calling thread) otherwise.
        totals.append(
            {
                e.key: ((e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000, e.count)
                for e in prof.key_averages()
            }
        )
    mine, base = totals
    keys = sorted(set(mine) | set(base), key=lambda k: -(mine.get(k, (0, 0))[0] - base.get(k, (0, 0))[0]))
    return [
        {
            "op": k,
            "ms": mine.get(k, (0.0, 0))[0],
            "floor_ms": base.get(k, (0.0, 0))[0],
            "calls": mine.get(k, (0, 0))[1],
            "floor_calls": base.get(k, (0, 0))[1],
        }
        for k in keys[:top]
    ]
