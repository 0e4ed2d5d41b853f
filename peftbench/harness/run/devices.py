"""Where runs go: the `--device` flag, one GPU per run slot for `sweep --jobs N`, what "peak memory" means on
each device, and the refusal of multi-process launches (a run is one process on one device)."""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING

import torch

from peftbench.errors import UsageError
from peftbench.harness.run.measure import PeakMemory

if TYPE_CHECKING:
    from peftbench.harness.run.precision import PrecisionChoice

log = logging.getLogger(__name__)

DEVICE_SPECS = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")

# One definition per device, keyed by PeakMemory.kind (the record's perf.peak_memory_kind).
PEAK_MEMORY_DEFINITIONS = {
    "cuda_max_allocated": "GPU: the most memory torch's allocator held for tensors during the run "
    "(torch.cuda.max_memory_allocated after reset_peak_memory_stats); excludes the CUDA context and memory "
    "cached but not allocated",
    "process_max_rss": "CPU: the run process's peak resident set size (ru_maxrss), everything the process "
    "held at its fullest, model loading and the interpreter included; each run has its own process",
}
PEAK_MEMORY_LEGEND = (
    "peak MiB: on GPU, the allocator's peak for tensors (torch.cuda.max_memory_allocated); on CPU, the run "
    "process's peak resident set size (ru_maxrss), interpreter and libraries included. The two are measured "
    "differently: compare rows of one device only."
)
# What torchrun, `accelerate launch` and MPI launchers set for every process they start (the same variables
# accelerate reads to decide it is distributed).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def parse_device(spec: str) -> torch.device:
    """`auto` (the first visible GPU, else the CPU), `cpu`, `cuda` or `cuda:N`. Asking for a GPU that is not
    there is a UsageError, not a silent fall back to the CPU: a benchmark must not quietly change device."""
    m = _SPEC.match(spec.strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"--device {spec!r}: expected {DEVICE_SPECS}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {spec}: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu"
        )
    if index is None:
        return torch.device("cuda")
    n = torch.cuda.device_count()
    if int(index) >= n:
        raise UsageError(f"--device {spec}: only {n} CUDA device(s) visible (cuda:0 to cuda:{n - 1})")
    return torch.device("cuda", int(index))


def make_accelerator(device: torch.device, choice: PrecisionChoice):
    """An accelerate Accelerator on `device` in `choice`'s precision. accelerate on its own takes the current
    GPU for a single process, so cuda:N is made the current device first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != choice.mixed_precision or _type(state.get("device")) != device.type):
        # accelerate keeps one state per process and refuses another precision or device for the rest of it;
        # runs one after another in one process (the inline executor, tests) may each differ. Safe here: a run
        # is never distributed (refuse_multiprocess), so there is no process group to lose.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=choice.mixed_precision)


def _type(device: object) -> str | None:
    return device.type if isinstance(device, torch.device) else None


def _visible_gpu_ids() -> list[str]:
    """The ids to put in a child's CUDA_VISIBLE_DEVICES: a sweep started under CUDA_VISIBLE_DEVICES=2,3 must
    give its children 2 and 3 (or the UUIDs it was given), not 0 and 1."""
    n = torch.cuda.device_count()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:
        ids = [s.strip() for s in inherited.split(",") if s.strip()]
        if len(ids) >= n:
            return ids[:n]
    return [str(i) for i in range(n)]


def assign_gpus(jobs: int, device_spec: str | torch.device) -> list[dict[str, str]] | None:
    """For a local `sweep --jobs N` on GPUs: the environment of each job slot, one GPU per slot
    (CUDA_VISIBLE_DEVICES=k, so every run sees its GPU as cuda:0). None when the runs go to the CPU or
    jobs == 1 (nothing to split: the child sees what the sweep sees).

    More jobs than GPUs are capped at one run per GPU (the returned list is shorter than `jobs`): two runs on one
    GPU would share its compute and memory bandwidth, and the step times and tokens/s the records report
    would then measure the neighbour as much as the method. The caller runs len(slots) at once."""
    device = device_spec if isinstance(device_spec, torch.device) else parse_device(device_spec)
    if device.type != "cuda" or jobs <= 1:
        return None
    ids = _visible_gpu_ids()
    if device.index is not None:
        ids = [ids[device.index]]  # every run goes to this one GPU
    slots = [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in ids[:jobs]]
    if jobs > len(ids):
        log.warning(
            "--jobs %d with %d GPU(s) for the runs: running %d at once, one per GPU (runs sharing a GPU would "
            "distort each other's speed numbers)",
            jobs,
            len(ids),
            len(slots),
        )
    else:
        log.info("--jobs %d: one run per GPU, CUDA_VISIBLE_DEVICES=%s", jobs, ",".join(ids[:jobs]))
    return slots


def peak_memory(device: torch.device) -> PeakMemory:
    """Start measuring peak memory on `device` now; `.peak()` reads it, `.kind` names its definition in
    PEAK_MEMORY_DEFINITIONS. (On GPU, construction resets torch's peak counter.)"""
    return PeakMemory(device)


def peak_memory_definition(device: torch.device) -> str:
    return PEAK_MEMORY_DEFINITIONS["cuda_max_allocated" if device.type == "cuda" else "process_max_rss"]


def launched_processes() -> int:
    """How many processes the launcher started for this job (1 when started plainly). An accelerate state that
    already exists is asked; otherwise the launcher's variables are read. PartialState is not created here:
    under a launcher that would join the process group, the very thing being refused."""
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:
            return int(PartialState().num_processes)
    except (ImportError, AttributeError):
        pass
    for var in _WORLD_SIZE_VARS:
        try:
            n = int(os.environ.get(var, "1"))
        except ValueError:
            continue
        if n > 1:
            return n
    return 1


def refuse_multiprocess() -> None:
    """peftbench trains a run in one process on one device; under `accelerate launch` (or torchrun) with several
    processes every process would run the whole sweep and write the same records. Say what to use instead."""
    n = launched_processes()
    if n > 1:
        raise UsageError(
            f"started as {n} processes (accelerate launch / torchrun); peftbench runs one process per run: start it "
            f"plainly and use `sweep --jobs N` (one run per GPU) or `sweep --executor ray` for several devices"
        )
