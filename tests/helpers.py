"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

from pathlib import Path

from peftbench.harness.run.plan import RunRequest, resolve
from peftbench.harness.run.runner import execute

FAST = ("max_steps=3", "train_rows=48", "eval_rows=24", "batch_size=16", "max_length=32", "eval_batch_size=32")


def quick_run(
    model_dir: Path,
    results: Path,
    task: str = "sst2",
    method: str = "lora",
    seed: int = 0,
    sets: tuple[str, ...] = (),
    budget: str | None = None,
    data: str = "sample",
) -> dict:
    cfg = resolve(
        RunRequest(
            task=task, method=method, seed=seed, model=str(model_dir), data=data, budget=budget, sets=FAST + tuple(sets)
        )
    )
    return execute(cfg, results, progress=False)
