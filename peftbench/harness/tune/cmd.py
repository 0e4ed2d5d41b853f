"""`peftbench tune`: choose settings per (task, method) on a dev split held out of the training rows, and
write them, with the grid and every dev score, into the profile's recipe.

Validation rows are never looked at: every tuning run has `dev_rows` set, so it trains on the rest of the
training rows and is scored on the held-out ones (see `harness.run.data.dev_split`). The runs are ordinary
records (their hash differs from a leaderboard run's by `dev_rows`), so an interrupted tune resumes like a
sweep and a rerun trains nothing.

The winner is the best mean dev score among the stable grid points (choose.stable_best): a rate is set aside
when one of its seeds, or of the next larger rate's, did not beat the trivial baseline on dev (stability.py).
The recipe names what was set aside and why.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.harness.args import add_set_option, int_list, names

log = logging.getLogger(__name__)

DEFAULT_DEV_ROWS = 500


def add_subcommand(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="choose learning rates (or other settings) on a dev split and write them into the profile's recipe",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", type=names, required=True)
    p.add_argument("--methods", type=names, required=True)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="values to try (repeatable; METHOD.KEY for one method). Default: each method's `tune_grid`",
    )
    p.add_argument("--budget", default="0.3M", help="budget of the budgeted methods while tuning")
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--dev-rows", type=int, default=DEFAULT_DEV_ROWS, help="training rows held out as the dev split")
    p.add_argument("--profile", default="standard", help="the profile whose recipe is read and written")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--data", default="sample")
    add_set_option(p, "extra setting for every tuning run (repeatable)")
    p.add_argument("--results", type=Path, default=Path("results") / "tune", help="where the tuning runs' records go")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--write", action="store_true", help="write the chosen values into the recipe file")
    p.add_argument("--recipe", type=Path, default=None, help="recipe file to update (default: the profile's own)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tune)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    from peftbench.config import parse_value

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip() or not raw.strip():
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        values = [parse_value(v.strip()) for v in raw.split(",") if v.strip()]
        grid[key.strip()] = values
    return grid


def method_grid(method: str, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The grid for one method: `--grid` keys scoped to it or unscoped, else its declared default grid."""
    from peftbench import registry

    cls = registry.adapters.get(method)
    own: dict[str, list[Any]] = {}
    for key, values in grid.items():
        scope, dot, rest = key.partition(".")
        if dot and scope in registry.adapters.names():
            if scope == method:
                own[rest] = values
        else:
            own[key] = values
    if not own:
        own = {k: list(v) for k, v in cls.tune_grid.items()} or {"lr": [cls.default_lr]}
    knobs = sorted(set(own) & set(cls.budget_knobs))
    if knobs:
        raise UsageError(f"{method}: {', '.join(knobs)} is solved from the budget; tune other settings")
    return own


def cmd_tune(args) -> int:
    from peftbench import registry
    from peftbench.harness.run.plan import RunRequest
    from peftbench.harness.sweep.driver import plan, run_sweep
    from peftbench.harness.tune.choose import GridPoint, record_choice, stable_best
    from peftbench.harness.tune.stability import collapsed_seeds
    from peftbench.harness.tune.table import tune_table
    from peftbench.recipes import Recipe, load_recipe, recipe_path, recipe_to_dict
    from peftbench.records import atomic_write_text, load_record

    if args.dev_rows < 1:
        raise UsageError(f"--dev-rows must be 1 or more, got {args.dev_rows}")
    grid = parse_grid(args.grid)
    requests: list[RunRequest] = []
    owners: list[tuple[str, str, int]] = []  # (task, method, grid point index) of each request
    combos: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task, method in itertools.product(args.tasks, args.methods):
        registry.tasks.get(task)
        g = method_grid(method, grid)
        keys = sorted(g)
        points = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(g[k] for k in keys))]
        combos[(task, method)] = points
        budgeted = registry.adapters.get(method).budgeted
        for (i, point), seed in itertools.product(enumerate(points), args.seeds):
            owners.append((task, method, i))
            sets = (f"dev_rows={args.dev_rows}", *args.sets, *(f"{k}={v!r}" for k, v in point.items()))
            requests.append(
                RunRequest(task=task, method=method, seed=seed, model=args.model, data=args.data,
                           budget=args.budget if budgeted else None, sets=sets, profile=args.profile,
                           device=args.device)  # fmt: skip
            )
    planned = plan(requests, args.results)
    by_request = dict(enumerate(_expand_planned(requests, planned)))
    outcome = run_sweep(planned, args.results, jobs=args.jobs, progress=not args.quiet and sys.stderr.isatty(),
                        device=args.device)  # fmt: skip

    path = args.recipe or recipe_path(args.profile)
    recipe = load_recipe(args.profile, path) or Recipe(args.profile, 1, {}, {}, {}, path)
    scores: dict[tuple[str, str, int], list[float]] = {}
    records: dict[tuple[str, str, int], dict[int, Path]] = {}
    for owner, req, p in zip(owners, requests, by_request.values(), strict=True):
        rec = load_record(p.record).record
        if rec is not None and rec.status == "ok" and rec.metrics.primary is not None:
            scores.setdefault(owner, []).append(rec.metrics.primary)
            records.setdefault(owner, {})[req.seed] = p.record
    results_points = {
        (t, m): [
            GridPoint(t, m, pt, tuple(scores.get((t, m, i), ())),
                      collapsed_seeds(registry.tasks.get(t), records.get((t, m, i), {})))  # fmt: skip
            for i, pt in enumerate(pts)
        ]
        for (t, m), pts in combos.items()
    }
    for (task, method), points in results_points.items():
        spec = registry.tasks.get(task)
        winner, rejected = stable_best(points, spec.higher_is_better)
        if winner is None:
            log.warning("%s/%s: no grid point finished; nothing chosen", task, method)
            continue
        for i, why in rejected.items():
            log.info("%s/%s: %s set aside (%s)", task, method, points[i].label(), why)
        recipe = record_choice(recipe, task, method, points, winner, dev_rows=args.dev_rows, seeds=args.seeds,
                               budget=args.budget if registry.adapters.get(method).budgeted else None,
                               metric=spec.primary_metric, rejected=rejected)  # fmt: skip
    print(tune_table(recipe, results_points))
    if args.write:
        import json

        atomic_write_text(path, json.dumps(recipe_to_dict(recipe), indent=1) + "\n")
        print(f"wrote {path}")
    return outcome.exit_code("tuning run")


def _expand_planned(requests, planned):
    """The planned run of each request (planning drops duplicate configs, so look them up by hash)."""
    from peftbench.harness.run.plan import resolve

    by_hash = {p.config.config_hash: p for p in planned}
    return [by_hash[resolve(r).config_hash] for r in requests]
