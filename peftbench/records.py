"""Run records: the typed `RunRecord`, one JSON file per run, written atomically, read back defensively (this
version and the ones before), and a lock per config so two processes never run the same config at once. No other
module reads or writes record files."""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig, canonical_json, run_config_from_dict, to_jsonable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_RESULTS = Path("results")
# What the table shows for a run without a budget (full fine-tuning, the head-only probe).
NO_BUDGET = "-"


def runs_dir(results: Path) -> Path:
    return Path(results) / "runs"


def record_path(results: Path, task: str, method: str, config_hash: str) -> Path:
    return runs_dir(results) / task / method / f"{config_hash}.json"


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path in the target's directory; renamed over `path` only when the block succeeds, so a
    reader sees the old file or the new one, never half of one, even if this process is killed mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def open_text(path: Path):
    """Open a text file that may be gzip-compressed (by its name)."""
    if Path(path).name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


# --- the typed record ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataInfo:
    source: str
    hash: str
    train_rows: int
    eval_rows_per_split: dict[str, int]

    @property
    def eval_rows(self) -> int:
        return sum(self.eval_rows_per_split.values())


@dataclass(frozen=True)
class Metrics:
    primary_name: str
    primary: float | None = None
    all: dict[str, float] = field(default_factory=dict)
    # One entry per evaluation: {"step": n, metric: value, ...}
    history: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Params:
    """Parameter counts at the end of training; `adapter` excludes the task head and is what a budget measures."""

    trainable: int
    adapter: int
    head: int
    total: int
    adapter_peak: int | None = None  # AdaLoRA: the initial (pre-pruning) adapter count


@dataclass(frozen=True)
class Perf:
    train_seconds: float | None = None
    train_cpu_seconds: float | None = None
    train_samples_per_second: float | None = None
    train_tokens_per_second: float | None = None
    step_time_ms_median: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    train_examples: int | None = None
    train_tokens: int | None = None


@dataclass(frozen=True)
class TrainLog:
    total_steps: int
    # [step, task loss, extra loss] on log steps
    loss_history: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """One run: the exact config it ran, what it measured, and whether it finished. Built by `RunRecord.start`
    and `finish`/`fail` (the runner and the tests use the same constructors); read and written only here."""

    config: RunConfig
    data: DataInfo
    metrics: Metrics
    train: TrainLog
    created: str
    status: str = "failed"
    error: str | None = None
    traceback: str | None = None
    params: Params | None = None
    perf: Perf | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    adapter_file: str | None = None
    # Whose code ran the method ("native" or "peft", Adapter.implementation); records written before the field
    # existed ran native code and read as such.
    implementation: str = "native"
    schema_version: int = SCHEMA_VERSION
    # Where it was read from; not part of the file.
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def start(
        cls, config: RunConfig, data: DataInfo, primary_name: str, total_steps: int, implementation: str = "native"
    ) -> RunRecord:
        """A record of a run that has not finished: it says failed until `finish` says otherwise."""
        return cls(
            config=config,
            data=data,
            metrics=Metrics(primary_name),
            train=TrainLog(total_steps),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            implementation=implementation,
        )

    def finish(
        self,
        metrics: dict[str, float],
        history: list[dict[str, Any]],
        params: Params,
        perf: Perf,
        loss_history: list[list[float]],
        diagnostics: dict[str, Any],
        adapter_file: str | None = None,
    ) -> RunRecord:
        return dataclasses.replace(
            self,
            status="ok",
            metrics=Metrics(
                self.metrics.primary_name, metrics[self.metrics.primary_name], dict(metrics), tuple(history)
            ),
            params=params,
            perf=perf,
            train=TrainLog(self.train.total_steps, tuple(tuple(x) for x in loss_history)),
            diagnostics=diagnostics,
            adapter_file=adapter_file,
        )

    def fail(self, error: str, traceback: str | None = None, diagnostics: dict[str, Any] | None = None) -> RunRecord:
        return dataclasses.replace(
            self,
            status="failed",
            error=error,
            traceback=traceback,
            diagnostics=self.diagnostics if diagnostics is None else diagnostics,
        )

    # --- facts every reader asks --------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def config_hash(self) -> str:
        return self.config.config_hash

    @property
    def run_id(self) -> str:
        return f"{self.config.task}-{self.config.method}-{self.config_hash}"

    @property
    def budget_spec(self) -> str:
        return self.config.budget or NO_BUDGET

    @property
    def variant(self) -> str:
        """Everything but the seed, hashed: runs are pooled over seeds only within one variant, so records made
        with another profile, data or --set never mix into one mean."""
        resolved = to_jsonable(self.config)
        resolved.pop("seed", None)
        return hashlib.sha256(canonical_json(resolved).encode()).hexdigest()[:8]

    # --- the file -----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        d = {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "path"}
        d["config"]["config_hash"] = self.config_hash
        return {"schema_version": d.pop("schema_version"), "run_id": self.run_id, **d}


def write_record(path: Path, record: RunRecord) -> None:
    atomic_write_text(path, json.dumps(record.to_json(), indent=1, sort_keys=False, default=str) + "\n")


def _params(d: dict[str, Any] | None) -> Params | None:
    return Params(**d) if d else None


def _perf(d: dict[str, Any] | None) -> Perf | None:
    if not d:
        return None
    known = {f.name for f in dataclasses.fields(Perf)}
    return Perf(**{k: v for k, v in d.items() if k in known})


def _metrics(d: dict[str, Any]) -> Metrics:
    return Metrics(
        d.get("primary_name") or "", d.get("primary"), dict(d.get("all") or {}), tuple(d.get("history") or ())
    )


def _train(d: dict[str, Any] | None) -> TrainLog:
    d = d or {}
    return TrainLog(int(d.get("total_steps") or 0), tuple(tuple(x) for x in d.get("loss_history") or ()))


def _common(data: dict[str, Any], config: RunConfig, info: DataInfo) -> RunRecord:
    return RunRecord(
        config=config,
        data=info,
        metrics=_metrics(data["metrics"]),
        train=_train(data.get("train")),
        created=str(data.get("created") or ""),
        status=data["status"],
        error=data.get("error"),
        traceback=data.get("traceback"),
        params=_params(data.get("params")),
        perf=_perf(data.get("perf")),
        diagnostics=dict(data.get("diagnostics") or {}),
        env=dict(data.get("env") or {}),
        adapter_file=data.get("adapter_file"),
        implementation=str(data.get("implementation") or "native"),
    )


def _from_v1(data: dict[str, Any]) -> RunRecord:
    """Version 1 stored the config twice: reshaped for reading, and `_resolved`, the exact config."""
    section = data["config"]
    if not isinstance(section.get("_resolved"), dict):
        raise ValueError("version-1 record without its resolved config")
    d = section.get("data") or {}
    info = DataInfo(
        str(d.get("source")),
        str(d.get("hash")),
        int(d.get("train_rows") or 0),
        dict(d.get("eval_rows_per_split") or {}),
    )
    return _common(data, run_config_from_dict(section["_resolved"]), info)


def _from_v2(data: dict[str, Any]) -> RunRecord:
    section = dict(data["config"])
    section.pop("config_hash", None)
    d = data.get("data") or {}
    info = DataInfo(
        str(d.get("source")),
        str(d.get("hash")),
        int(d.get("train_rows") or 0),
        dict(d.get("eval_rows_per_split") or {}),
    )
    return _common(data, run_config_from_dict(section), info)


_READERS = {1: _from_v1, 2: _from_v2}


@dataclass(frozen=True)
class LoadedRecord:
    path: Path
    record: RunRecord | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None and self.record.ok


def load_record(path: Path) -> LoadedRecord:
    """A record, or the reason it cannot be used (corrupt, truncated, other schema). Never raises on bad files."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return LoadedRecord(path, None, "missing")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return LoadedRecord(path, None, f"unreadable record ({type(e).__name__}: {e})")
    if not isinstance(data, dict):
        return LoadedRecord(path, None, "not a JSON object")
    version = data.get("schema_version")
    reader = _READERS.get(version) if isinstance(version, int) else None
    if reader is None:
        return LoadedRecord(path, None, f"schema_version {version!r}, this peftbench reads {sorted(_READERS)}")
    for key in ("status", "config", "metrics", "params"):
        if key not in data:
            return LoadedRecord(path, None, f"missing key {key!r}")
    # Right keys with wrong shapes (hand edits, another tool's file) would be misread downstream: reject them here.
    if data["status"] not in ("ok", "failed"):
        return LoadedRecord(path, None, f"status {data['status']!r} is neither 'ok' nor 'failed'")
    for key in ("config", "metrics"):
        if not isinstance(data[key], dict):
            return LoadedRecord(path, None, f"{key!r} is not a JSON object")
    if data["params"] is not None and not isinstance(data["params"], dict):
        return LoadedRecord(path, None, "'params' is not a JSON object")
    stored = data["config"].get("config_hash")
    if stored is not None and stored != path.stem:
        return LoadedRecord(path, None, f"holds config {stored!r}, not the one its name says")
    try:
        record = reader(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        return LoadedRecord(path, None, f"malformed record ({type(e).__name__}: {e})")
    if stored is not None and record.config_hash != stored:
        return LoadedRecord(path, None, f"its config hashes to {record.config_hash}, not the {stored} it names")
    if record.ok and record.metrics.primary is None:
        return LoadedRecord(path, None, "status ok without a primary metric")
    return LoadedRecord(path, dataclasses.replace(record, path=path))


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


def peft_adapter_dir(record_file: Path) -> Path:
    """The same in peft's format (a directory for `PeftModel.from_pretrained`), for methods peft loads."""
    return Path(record_file).with_suffix(".adapter")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory beside `path`, put in its place only when the block succeeds: a reader sees the
    old directory or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = None
    try:
        yield tmp
        if path.exists():
            # A rename cannot replace a non-empty directory: move the old one aside first, remove it after.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def tracker_dir(record_file: Path, tracker: str) -> Path:
    """A tracker's event files (`--log-to tensorboard`) live beside the record, in `<hash>.<tracker>/`."""
    return Path(record_file).with_suffix(f".{tracker}")


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
