"""Rows for a task from one of three sources (bundled sample, local directory, hub), checked row by row,
and their features, tokenised once per (task, data, model, max_length) and cached on disk."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.records import atomic_target, open_text
from peftbench.tasks.base import Features, TaskSpec

log = logging.getLogger(__name__)

SAMPLE_ROOT = Path(__file__).resolve().parents[2] / "tasks" / "data"
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


def cache_dir() -> Path:
    return Path(os.environ.get("PEFTBENCH_CACHE", Path.home() / ".cache" / "peftbench"))


def splits_needed(task: TaskSpec) -> list[str]:
    return [task.train_split, *(e.split for e in task.eval_splits)]


def _split_file(task_dir: Path, split: str) -> Path | None:
    for suffix in _SUFFIXES:
        p = task_dir / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def local_task_dir(task: TaskSpec, source: str) -> Path:
    """Directory holding `<split>.jsonl[.gz]` for this task under a data root. Accepts the HF-schema layout
    `<root>/glue/<config>/` and the flat `<root>/<task>/`."""
    root = SAMPLE_ROOT if source == "sample" else Path(source).expanduser()
    if source != "sample" and not root.is_dir():
        raise UsageError(
            f"data directory {source!r} does not exist; pass --data sample, --data hub or a directory "
            f"laid out as <dir>/{task.local_dir}/<split>.jsonl"
        )
    for cand in (root / task.local_dir, root / task.name):
        if cand.is_dir():
            return cand
    if source == "sample":
        raise UsageError(
            f"task {task.name!r} has no bundled sample rows; use --data hub (needs internet) or "
            f"--data DIR with {task.local_dir}/<split>.jsonl files"
        )
    raise UsageError(
        f"data directory {source!r} has no {task.local_dir}/ folder for task {task.name!r}; "
        f"expected {root / task.local_dir}/<split>.jsonl"
    )


def split_file(task: TaskSpec, source: str, split: str) -> Path:
    task_dir = local_task_dir(task, source)
    p = _split_file(task_dir, split)
    if p is None:
        raise UsageError(
            f"{task_dir} has no {split}.jsonl (needed for task {task.name!r}); "
            f"splits needed: {', '.join(splits_needed(task))}"
        )
    return p


def data_fingerprint(task: TaskSpec, source: str) -> str:
    """Content hash of the files a run reads (hub: the dataset name, as the hub has no content hash here)."""
    if source == "hub":
        return f"hub:{task.hub_path}:{task.hub_config or ''}"
    h = hashlib.sha256()
    for split in splits_needed(task):
        h.update(split.encode())
        h.update(_read(split_file(task, source, split)).raw)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class _SplitFile:
    raw: bytes
    rows: tuple[tuple[int, Any], ...]  # (line number, parsed JSON), blank lines skipped


def _read(path: Path) -> _SplitFile:
    """A split file read and parsed once per process (planning, checking, fingerprinting and loading all need
    it), again only if it changed on disk."""
    st = path.stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _read_cached(path: str, mtime_ns: int, size: int) -> _SplitFile:
    raw = Path(path).read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if path.endswith(".gz") else raw.decode("utf-8")
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
    return _SplitFile(raw, tuple(rows))


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    return list(_read(Path(path)).rows)


def count_rows(path: Path) -> int:
    return len(_read(Path(path)).rows)


def check_rows(task: TaskSpec, rows: list[tuple[int, Any]], where: str) -> list[dict]:
    for lineno, row in rows:
        problem = "not a JSON object" if not isinstance(row, dict) else task.check_row(row)
        if problem:
            raise UsageError(f"{where}:{lineno}: {problem}; fix the row or remove it")
    if not rows:
        raise UsageError(f"{where}: no rows")
    return [r for _, r in rows]


def _load_local(task: TaskSpec, source: str, split: str) -> list[dict]:
    path = split_file(task, source, split)
    # Checked line by line, so a bad row is named by file and line; copies, as callers own their rows.
    return [dict(r) for r in check_rows(task, read_jsonl(path), str(path))]


def _load_hub(task: TaskSpec, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(task.hub_path, task.hub_config, split=split)
    except Exception as e:  # the hub client raises many types; all mean the same to the user
        raise UsageError(_hub_message(task, split, e)) from None
    return check_rows(task, list(enumerate(ds.to_list(), 1)), f"{task.hub_path}/{task.hub_config}/{split}")


def load_rows(task: TaskSpec, source: str, split: str, limit: int = 0) -> list[dict]:
    rows = _load_hub(task, split) if source == "hub" else _load_local(task, source, split)
    return subset_rows(task, rows, limit)


def subset_rows(task: TaskSpec, rows: list[dict], limit: int) -> list[dict]:
    if not limit or limit >= len(rows):
        return rows
    if task.subset == "head":
        return rows[:limit]  # keep whole paragraphs together: the files are in article order
    # A fixed subset, the same for every seed and method, so their scores compare on the same rows.
    keep = sorted(random.Random(0).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def dev_split(
    task: TaskSpec, rows: list[dict], n_dev: int, exclude: frozenset[str] = frozenset()
) -> tuple[list[dict], list[dict]]:
    """Training rows cut into (rest, dev) by content: a row is dev when the hash of its `TaskSpec.dev_key` ranks
    among the lowest. Rows sharing a key (a duplicate sentence, a SQuAD paragraph's questions) land on the same
    side, so nothing the model trains on is scored as dev; the cut is the same on every machine and for every
    seed and method. Rows whose key is in `exclude` (text that also occurs in a validation split: CoLA and
    STS-B have a few) are never dev. Both parts keep the file order."""
    if n_dev <= 0:
        return rows, []
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        content = task.dev_key(row)
        if content in exclude:
            continue
        key = hashlib.sha256(("peftbench-dev-v1\n" + content).encode()).hexdigest()
        groups.setdefault(key, []).append(i)
    chosen: set[int] = set()
    for key in sorted(groups):
        if len(chosen) >= n_dev:
            break
        chosen.update(groups[key])
    if len(chosen) >= len(rows):
        raise UsageError(
            f"dev_rows={n_dev} leaves no training rows for {task.name} ({len(rows)} rows); use a smaller dev_rows"
        )
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def validation_keys(task: TaskSpec, source: str) -> frozenset[str]:
    """The content keys of every evaluation split's rows: what a dev split must never contain."""
    return frozenset(task.dev_key(r) for e in task.eval_splits for r in load_rows(task, source, e.split))


def train_and_eval_rows(task: TaskSpec, source: str, train_cap: int, eval_cap: int, n_dev: int):
    """The rows a run trains on, and its evaluation sets {split: (rows, metric prefix)}: the task's validation
    splits, or with `n_dev` the dev rows held out of the training split (never a validation row)."""
    if n_dev:
        rest, dev = dev_split(task, load_rows(task, source, task.train_split), n_dev, validation_keys(task, source))
        return subset_rows(task, rest, train_cap), {"dev": (subset_rows(task, dev, eval_cap), "")}
    train = load_rows(task, source, task.train_split, train_cap)
    return train, {e.split: (load_rows(task, source, e.split, eval_cap), e.prefix) for e in task.eval_splits}


# --- features -----------------------------------------------------------------------------------------------


def featurize_cached(
    task: TaskSpec, rows: list[dict], tokenizer, key: dict[str, Any], max_length: int, train: bool
) -> Features:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_dir() / "features" / f"{task.name}-{digest}.json.gz"
    if path.is_file():
        try:
            with open_text(path) as f:
                d = json.load(f)
            return Features(d["columns"], d.get("meta", {}))
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable feature cache %s (%s)", path, e)
    feats = task.featurize(rows, tokenizer, max_length, train)
    try:
        blob = gzip.compress(json.dumps({"columns": feats.columns, "meta": feats.meta}).encode(), compresslevel=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path) as tmp:
            tmp.write_bytes(blob)
    except OSError as e:  # a read-only home must not stop a run
        log.warning("could not cache features at %s (%s)", path, e)
    return feats


def check_data(task_name: str, source: str) -> None:
    """What a task reads, checked before anything trains or is written (a run takes its lock file only after
    this): every row of a local directory, named by file and line on a bad one, and for `hub` that the dataset
    can be had at all (online, or from the local cache when offline), so an offline hub run fails at once."""
    from peftbench import registry

    if source == "sample":  # bundled rows are checked by the test suite
        return
    task = registry.tasks.get(task_name)
    if source == "hub":
        _check_hub(task)
        return
    for split in splits_needed(task):
        path = split_file(task, source, split)
        check_rows(task, read_jsonl(path), str(path))


def _check_hub(task: TaskSpec) -> None:
    import datasets

    try:
        # The builder only: its metadata (or the cached copy offline), no rows downloaded or read.
        builder = datasets.load_dataset_builder(task.hub_path, task.hub_config)
    except Exception as e:  # the hub client raises many types; all mean the same to the user
        raise UsageError(_hub_message(task, "", e)) from None
    known = set((builder.info.splits or {}).keys())
    missing = [s for s in splits_needed(task) if known and s not in known]
    if missing:
        raise UsageError(
            f"{task.hub_path} {task.hub_config or ''} has no split {', '.join(missing)} "
            f"(it has {', '.join(sorted(known))})"
        )


def _hub_message(task: TaskSpec, split: str, e: Exception) -> str:
    where = f" split {split}" if split else ""
    return (
        f"could not load {task.hub_path} {task.hub_config or ''}{where} from the hub ({type(e).__name__}); "
        f"without internet use --data sample or --data DIR"
    )
