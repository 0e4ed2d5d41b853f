"""Markdown tables of tuning: what each grid point scored on dev, and what a recipe holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from peftbench.recipes import Recipe


def tune_table(recipe: Recipe, points: Mapping[tuple[str, str], Sequence]) -> str:
    """One row per (task, method, grid point): its dev score (mean over seeds, n) and a mark on the chosen one."""
    lines = [
        "| task | method | setting | dev score | n | seeds not learned | chosen |",
        "|---|---|---|---:|---:|---|:---:|",
    ]
    for (task, method), pts in points.items():
        chosen = recipe.chosen(task, method)
        for p in pts:
            picked = bool(chosen) and all(k in chosen and chosen[k].value == v for k, v in p.values.items())
            score = "failed" if p.mean is None else f"{p.mean:.4f}"
            lost = ",".join(map(str, p.collapsed))
            lines.append(
                f"| {task} | {method} | {p.label()} | {score} | {len(p.scores)} | {lost} | {'✓' if picked else ''} |"
            )
    return "\n".join(lines)


def recipe_table(recipe: Recipe, tasks=None, methods=None) -> str:
    """Per (task, method) and tuned setting: the value, its dev score, and the spread over the grid (worst to
    best dev score): a method whose score moves a lot with the setting only wins when tuned."""
    lines = [
        "| task | method | setting | value | grid | dev (chosen) | dev range over grid | dev rows | seeds |",
        "|---|---|---|---:|---|---:|---|---:|---|",
    ]
    for task in sorted(recipe.tasks):
        if tasks is not None and task not in tasks:
            continue
        for method, settings in sorted(recipe.tasks[task].methods.items()):
            if methods is not None and method not in methods:
                continue
            for key, c in sorted(settings.items()):
                if not c.grid:
                    lines.append(f"| {task} | {method} | {key} | {c.value} | (fixed) | | | | |")
                    continue
                spread = c.spread()
                at = c.dev.get(_fmt(c.value))
                rng = f"{spread[0]:.4f} – {spread[1]:.4f}" if spread else ""
                grid = ", ".join(_fmt(v) + (" ✗" if _fmt(v) in c.unstable else "") for v in c.grid)
                lines.append(
                    f"| {task} | {method} | {key} | {_fmt(c.value)} | {grid} | "
                    f"{'' if at is None else f'{at:.4f}'} | {rng} | {c.dev_rows} | {','.join(map(str, c.seeds))} |"
                )
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


UNSTABLE_LEGEND = (
    "✗: a value `tune` set aside as unstable: a seed of it, or of the next larger rate, did not beat the trivial "
    "baseline on dev."
)


def recipe_sections(profiles, tasks, methods) -> str:
    """For a leaderboard: per profile with a recipe, the tuned settings of the tasks and methods shown, with
    their dev scores and spread over the grid; empty when nothing shown was tuned."""
    from peftbench.recipes import load_recipe

    out = []
    for profile in sorted(set(profiles)):
        recipe = load_recipe(profile)
        if recipe is None:
            continue
        table = recipe_table(recipe, set(tasks), set(methods))
        if table.count("\n") < 2:
            continue
        aside = " " + UNSTABLE_LEGEND if " ✗" in table else ""
        out.append(
            f"\nSettings of the `{profile}` profile chosen on a dev split held out of the training rows "
            f"(`peftbench tune`; recipe version {recipe.version}). The range is the dev score's worst to best over "
            f"the grid: a wide one means the method wins only when tuned.{aside}\n\n{table}\n"
        )
    return "".join(out)
