"""Live training curves (`--log-to tensorboard`): the losses, the adapter's own per-step scalars and every
evaluation, streamed while a run trains, for people watching it. The record keeps what it always kept; these
files are extra and never part of the config (nor of its hash).

Through accelerate's tracker classes, so another backend is one more entry in TRACKERS."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.registry import unknown_name_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerKind:
    modules: tuple[str, ...]  # any one of them is enough (accelerate's tensorboard tracker takes either)
    extra: str  # the optional dependency group of peftbench that installs it


TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind(("tensorboard", "tensorboardX"), "tensorboard"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def check_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """The requested trackers, each known and installed, in order and without repeats; else a one-line error
    that says what to install. Checked when a run or sweep is planned, before anything is written."""
    out = tuple(dict.fromkeys(names))
    for name in out:
        kind = TRACKERS.get(name)
        if kind is None:
            raise UsageError(unknown_name_message("tracker", name, sorted(TRACKERS)))
        if not any(_installed(m) for m in kind.modules):
            raise UsageError(
                f"--log-to {name} needs the {kind.modules[0]} package: pip install 'peftbench[{kind.extra}]'"
            )
    return out


class RunTrackers:
    """The trackers of one run. Falsy when there are none, so the training loop skips building what it would log."""

    def __init__(self, trackers: list) -> None:
        self._trackers = trackers

    def __bool__(self) -> bool:
        return bool(self._trackers)

    def log(self, values: dict[str, float], step: int) -> None:
        for t in self._trackers:
            t.log(values, step=step)

    def close(self) -> None:
        for t in self._trackers:
            t.finish()
        self._trackers = []


def open_trackers(names: Iterable[str], where: dict[str, Path]) -> RunTrackers:
    """One tracker per name, writing into `where[name]`, a folder emptied first: a config rerun after a failure
    must not show the failed attempt's curves beside the new ones."""
    trackers = []
    for name in check_trackers(names):
        folder = Path(where[name])
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        trackers.append(_open(name, folder))
        log.debug("%s events go to %s", name, folder)
    return RunTrackers(trackers)


def _open(name: str, folder: Path):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    # accelerate's tracker for this name; those that write files take (run name, logging dir) and write into
    # logging_dir/run_name.
    tracker = LOGGER_TYPE_TO_CLASS[name](folder.name, folder.parent)
    # accelerate >= 1.x opens the writer in start() (Accelerator.init_trackers calls it); older ones in __init__.
    start = getattr(tracker, "start", None)
    if callable(start):
        start()
    return tracker
