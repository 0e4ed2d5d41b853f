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
    collapsed: tuple[int, ...] = ()  # seeds whose dev run did not beat the trivial baseline (stability.py)

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


def is_rate(key: str) -> bool:
    """Settings where a larger value moves toward divergence: learning rates."""
    return key == "lr" or key.endswith("_lr") or key.endswith(".lr")


def unstable(points: Sequence[GridPoint]) -> dict[int, str]:
    """Grid points (by index) not to choose, with the reason: a seed of the point itself did not learn, or the
    next larger learning rate in the grid (every other setting equal) did not learn on some seed. The second is
    the edge of divergence: a rate that wins on dev right below a collapse is the one that collapses on more rows
    or another seed."""
    out: dict[int, str] = {}
    for i, p in enumerate(points):
        if p.collapsed:
            out[i] = f"seed {','.join(map(str, p.collapsed))} did not learn on dev"
            continue
        for key, value in p.values.items():
            if not is_rate(key) or not isinstance(value, (int, float)):
                continue
            larger = [q for q in points if _same_but(q, p, key) and isinstance(q.values[key], (int, float))
                      and q.values[key] > value]  # fmt: skip
            if not larger:
                continue
            nxt = min(larger, key=lambda q: q.values[key])
            if nxt.collapsed:
                out[i] = f"next {key} up ({_fmt(nxt.values[key])}) did not learn on dev: edge of divergence"
                break
    return out


def _same_but(q: GridPoint, p: GridPoint, key: str) -> bool:
    return q.values.keys() == p.values.keys() and all(q.values[k] == v for k, v in p.values.items() if k != key)


def stable_best(points: Sequence[GridPoint], higher_is_better: bool = True) -> tuple[GridPoint | None, dict[int, str]]:
    """The best point among the stable ones, and the reasons the others were set aside. When no point is
    stable (a task nothing learns, or every rate collapses somewhere), the plain best, with nothing set aside:
    the rule then has no safer value to offer."""
    rejected = unstable(points)
    kept = [p for i, p in enumerate(points) if i not in rejected]
    winner = best(kept, higher_is_better)
    if winner is None:
        return best(points, higher_is_better), {}
    return winner, rejected


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
    rejected: Mapping[int, str] | None = None,
) -> Recipe:
    """A copy of the recipe with the winner's values for (task, method), each with its grid, dev scores and the
    values the stability rule set aside (`rejected`: point index -> reason, from `stable_best`)."""
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
        # A value is set aside when every point having it was (with one setting in the grid: that point).
        aside = {}
        for v in grid:
            idx = [i for i, p in enumerate(points) if p.values[key] == v]
            if rejected and idx and all(i in rejected for i in idx):
                aside[_fmt(v)] = rejected[idx[0]]
        settings[key] = Chosen(value, tuple(grid), dev, dev_rows, tuple(seeds), budget, metric, aside)
    methods = {**tr.methods, method: settings}
    tasks = {**recipe.tasks, task: dataclasses.replace(tr, methods=methods)}
    return dataclasses.replace(recipe, tasks=tasks)


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
