"""Recipes: per-task training settings and per-method values chosen on a dev split, read by a training profile.

A profile (config.PROFILES) is one starting point for every task; a recipe file `<profile>.json` beside this
module refines it per task (rows, epochs, batch, length, evaluation) and per (task, method) (learning rate,
a method knob) with values `peftbench tune` chose on a dev split carved out of the training rows. Each chosen
value keeps its provenance: the grid it came from, the dev score of every grid point, the dev rows and seeds.

Precedence, lowest first: the profile, the task's `profile_overrides`, the recipe's task settings, the recipe's
method settings, then the user's `--set`. The resolved values land in the run's config, so its hash (and the
record) say what ran, whichever layer set them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError

log = logging.getLogger(__name__)

RECIPE_DIR = Path(__file__).resolve().parent
SCHEMA = 1


@dataclass(frozen=True)
class Chosen:
    """One tuned setting: the value used, and how it was chosen."""

    value: Any
    grid: tuple[Any, ...] = ()
    dev: Mapping[str, float] = field(default_factory=dict)  # str(grid value) -> mean dev score
    dev_rows: int = 0
    seeds: tuple[int, ...] = ()
    budget: str | None = None
    metric: str = ""
    unstable: Mapping[str, str] = field(default_factory=dict)  # str(grid value) -> why tune set it aside

    def spread(self) -> tuple[float, float] | None:
        """(worst, best) dev score over the grid: how much the method depends on this choice."""
        scores = [v for v in self.dev.values() if v is not None]
        return (min(scores), max(scores)) if scores else None


@dataclass(frozen=True)
class TaskRecipe:
    train: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Mapping[str, Chosen]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    profile: str
    version: int
    tuned_on: Mapping[str, Any]
    sources: Mapping[str, str]
    tasks: Mapping[str, TaskRecipe]
    path: Path | None = None

    def sets(self, task: str, method: str) -> tuple[str, ...]:
        """The recipe's settings for one run, as `--set` items (task settings first, then the method's)."""
        tr = self.tasks.get(task)
        if tr is None:
            return ()
        items = [f"train.{k}={json.dumps(v)}" for k, v in sorted(tr.train.items())]
        for key, chosen in sorted(tr.methods.get(method, {}).items()):
            items.append(f"{key}={json.dumps(chosen.value)}")
        return tuple(items)

    def chosen(self, task: str, method: str) -> Mapping[str, Chosen]:
        tr = self.tasks.get(task)
        return tr.methods.get(method, {}) if tr else {}


def recipe_path(profile: str) -> Path:
    return RECIPE_DIR / f"{profile}.json"


def load_recipe(profile: str, path: Path | None = None) -> Recipe | None:
    """The profile's recipe, None when it has none."""
    p = path or recipe_path(profile)
    if not p.is_file():
        return None
    st = p.stat()
    return _load(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Recipe:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return recipe_from_dict(d, Path(path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsageError(f"recipe {path} is unreadable ({type(e).__name__}: {e}); restore it from git") from None


def recipe_from_dict(d: dict[str, Any], path: Path | None = None) -> Recipe:
    if d.get("schema") != SCHEMA:
        raise ValueError(f"schema {d.get('schema')!r}, expected {SCHEMA}")
    tasks = {}
    for name, t in d.get("tasks", {}).items():
        methods = {
            m: {k: _chosen(v) for k, v in settings.items()} for m, settings in t.get("methods", {}).items()
        }
        tasks[name] = TaskRecipe(dict(t.get("train", {})), methods, t.get("note", ""))
    return Recipe(d["profile"], int(d["version"]), d.get("tuned_on", {}), d.get("sources", {}), tasks, path)


def _chosen(v: Any) -> Chosen:
    if not isinstance(v, dict):
        return Chosen(v)
    return Chosen(
        v["value"],
        tuple(v.get("grid", ())),
        dict(v.get("dev", {})),
        int(v.get("dev_rows", 0)),
        tuple(v.get("seeds", ())),
        v.get("budget"),
        v.get("metric", ""),
        dict(v.get("unstable", {})),
    )


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for name in sorted(r.tasks):
        t = r.tasks[name]
        entry: dict[str, Any] = {}
        if t.note:
            entry["note"] = t.note
        entry["train"] = dict(sorted(t.train.items()))
        entry["methods"] = {
            m: {k: _chosen_dict(c) for k, c in sorted(s.items())} for m, s in sorted(t.methods.items())
        }
        tasks[name] = entry
    return {
        "schema": SCHEMA,
        "profile": r.profile,
        "version": r.version,
        "tuned_on": dict(r.tuned_on),
        "sources": dict(r.sources),
        "tasks": tasks,
    }


def _chosen_dict(c: Chosen) -> Any:
    if not c.grid:
        return c.value
    return {
        "value": c.value,
        "grid": list(c.grid),
        "dev": dict(c.dev),
        "metric": c.metric,
        "dev_rows": c.dev_rows,
        "seeds": list(c.seeds),
        "budget": c.budget,
        **({"unstable": dict(c.unstable)} if c.unstable else {}),
    }
