"""Run records: one JSON file per run, written atomically, read back defensively."""

from __future__ import annotations

import json
import logging
import os
import tempfile
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
