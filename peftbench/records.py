"""Run records: one JSON file per run, written atomically, read back defensively, and a lock per config so
two processes never run the same config at once."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_RESULTS = Path("results")


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def record_path(results: Path, task: str, method: str, config_hash: str) -> Path:
    return runs_dir(results) / task / method / f"{config_hash}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target: a reader sees
    the old file or the new one, never half of one, even if this process is killed mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=False, default=str) + "\n")


@dataclass(frozen=True)
class LoadedRecord:
    path: Path
    data: dict[str, Any] | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None and self.data.get("status") == "ok"


def load_record(path: Path) -> LoadedRecord:
    """A record, or the reason it cannot be used (corrupt, truncated, other schema). Never raises on bad files."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return LoadedRecord(Path(path), None, "missing")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return LoadedRecord(Path(path), None, f"unreadable record ({type(e).__name__}: {e})")
    if not isinstance(data, dict):
        return LoadedRecord(Path(path), None, "not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return LoadedRecord(Path(path), None, f"schema_version {version!r}, this peftbench reads {SCHEMA_VERSION}")
    for key in ("status", "config", "metrics", "params"):
        if key not in data:
            return LoadedRecord(Path(path), None, f"missing key {key!r}")
    # Right keys with wrong shapes (hand edits, another tool's file) would be misread downstream: reject them here.
    if data["status"] not in ("ok", "failed"):
        return LoadedRecord(Path(path), None, f"status {data['status']!r} is neither 'ok' nor 'failed'")
    for key in ("config", "metrics", "params"):
        if not isinstance(data[key], dict):
            return LoadedRecord(Path(path), None, f"{key!r} is not a JSON object")
    stored = data["config"].get("config_hash")
    if stored is not None and stored != Path(path).stem:
        return LoadedRecord(Path(path), None, f"holds config {stored!r}, not the one its name says")
    return LoadedRecord(Path(path), data)


def iter_records(results: Path, warn: bool = True) -> Iterator[LoadedRecord]:
    root = runs_dir(results)
    if not root.exists():
        return
    for path in sorted(root.glob("*/*/*.json")):
        rec = load_record(path)
        if rec.problem and warn:
            log.warning("skipping %s: %s", path, rec.problem)
        yield rec


def predictions_path(record_file: Path) -> Path:
    """Per-example predictions live beside the record (the paired bootstrap reads them)."""
    return Path(record_file).with_suffix(".preds.jsonl")


def adapter_weights_path(record_file: Path) -> Path:
    """Trained adapter and head weights (safetensors) live beside the record."""
    return Path(record_file).with_suffix(".adapter.safetensors")


def set_aside(path: Path) -> Path:
    """Rename an unusable record out of the way (`<name>.unusable[.N]`) so rerunning its config loses nothing."""
    path = Path(path)
    target = path.with_name(f"{path.name}.unusable")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.unusable.{n}")
        n += 1
    os.replace(path, target)
    return target


# --- one runner per config ------------------------------------------------------------------------------------


def lock_path(record_file: Path) -> Path:
    return Path(record_file).with_name(Path(record_file).name + ".lock")


def try_lock(record_file: Path) -> int | None:
    """An exclusive flock on `<record>.lock`, or None when another live process holds it.

    The lock belongs to the open file, not to this process: a child started with this descriptor in its
    `pass_fds` keeps the config locked for as long as it lives, even if its parent is killed. The kernel
    drops the lock when the last holder dies, however it dies, so there are no stale locks to clean up.
    Release by closing the descriptor (`release_lock`); never delete the lock file, which would let a third
    process lock a fresh inode while the second still holds the old one."""
    path = lock_path(record_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for the message of whoever waits: informative only, the flock is the lock.
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
    return fd


def lock_holder(record_file: Path) -> int | None:
    """The pid written by the last process to take the lock (it may have finished since)."""
    try:
        return int(json.loads(lock_path(record_file).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def release_lock(fd: int) -> None:
    # Closing, not LOCK_UN: an unlock would also free the lock for a child that shares this open file.
    os.close(fd)
