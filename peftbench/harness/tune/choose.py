"""From dev-split scores to recipe values: pure functions, no training, so the choice is easy to test."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from peftbench.recipes import Chosen, Recipe, TaskRecipe


@dataclass(frozen=True)
class GridPoint:
    """One combination of grid values for one (task, method), and the dev scores of its seeds."""

    task: str
    method: str
    values: Mapping[str, Any]  # setting -> value
    scores: tuple[float, ...]  # one per seed that finished

    @property
    def mean(self) -> float | None:
        return math.fsum(self.scores) / len(self.scores) if self.scores else None

    def label(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.values.items()))


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def best(points: Sequence[GridPoint], higher_is_better: bool = True) -> GridPoint | None:
    """The point with the best mean dev score; ties go to the earlier point in grid order."""
    scored = [p for p in points if p.mean is not None]
    if not scored:
        return None
    sign = 1.0 if higher_is_better else -1.0
    top = max(sign * p.mean for p in scored)  # type: ignore[operator]
    return next(p for p in scored if sign * p.mean == top)  # type: ignore[operator]


def record_choice(
    recipe: Recipe,
    task: str,
    method: str,
    points: Sequence[GridPoint],
    winner: GridPoint,
    *,
    dev_rows: int,
    seeds: Sequence[int],
    budget: str | None,
    metric: str,
) -> Recipe:
    """A copy of the recipe with the winner's values for (task, method), each with its grid and dev scores."""
    tr = recipe.tasks.get(task, TaskRecipe())
    settings = dict(tr.methods.get(method, {}))
    for key, value in winner.values.items():
        grid = _unique([p.values[key] for p in points])
        # A setting's dev score per value: the best point having that value (the other settings at their best).
        dev: dict[str, float] = {}
        for v in grid:
            means = [p.mean for p in points if p.values[key] == v and p.mean is not None]
            if means:
                dev[_fmt(v)] = round(max(means), 6)
        settings[key] = Chosen(value, tuple(grid), dev, dev_rows, tuple(seeds), budget, metric)
    methods = {**tr.methods, method: settings}
    tasks = {**recipe.tasks, task: dataclasses.replace(tr, methods=methods)}
    return dataclasses.replace(recipe, tasks=tasks)


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
