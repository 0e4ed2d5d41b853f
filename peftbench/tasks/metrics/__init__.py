"""Task metrics, computed by local `evaluate` modules that live next to this file (the hub is not reachable).

Each module is a directory `<name>/<name>.py` here, loaded with `evaluate.load(<dir path>, config_name=...)`.
A task names its module and config in its spec (`TaskSpec.metric_module`, `metric_config`); a new family plugs in
with its directory here and those two fields.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench.errors import UsageError

if TYPE_CHECKING:
    import evaluate

    from peftbench.tasks.base import TaskSpec

log = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent

# Loaded modules, one per (directory, config): evaluate.load copies and imports the script, which is too slow
# to repeat for every evaluation (and for every resample of a paired bootstrap).
_LOADED: dict[tuple[str, str | None], evaluate.EvaluationModule] = {}


def module_path(name: str) -> Path:
    return METRICS_DIR / name


def load_metric(name: str, config: str | None = None) -> evaluate.EvaluationModule:
    """The local evaluate module `name` (a directory here) with `config`, loaded once per process."""
    key = (name, config)
    if key not in _LOADED:
        path = module_path(name)
        if not (path / f"{name}.py").is_file():
            raise UsageError(f"no metric module {name!r}: expected {path / (name + '.py')}")
        import evaluate

        try:
            # keep_in_memory: no Arrow cache files or file locks under ~/.cache, and nothing left behind.
            _LOADED[key] = evaluate.load(str(path), config_name=config, keep_in_memory=True)
        except KeyError as e:
            raise UsageError(f"metric module {name!r} has no config {config!r}: {e.args[0] if e.args else e}") from e
        log.debug("loaded metric module %s (config %s)", path, config)
    return _LOADED[key]


def compute(task: TaskSpec, predictions: list, references: list, **kwargs: Any) -> dict[str, float]:
    """The task's metrics as plain floats, keyed exactly by `task.metric_names` (in that order).

    `kwargs` go to the module's `compute` (e.g. a no-answer threshold for a span family)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references for task {task.name!r}")
    if not predictions:
        raise UsageError(f"nothing to score for task {task.name!r}: the evaluation split is empty; check the data")
    name, config = task.metric_module or task.name, task.metric_config
    metric = load_metric(name, config)
    try:
        result = metric.compute(predictions=predictions, references=references, **kwargs)
    except Exception:
        # A failed compute can leave rows buffered in the module; drop it so the next call starts clean.
        _LOADED.pop((name, config), None)
        raise
    missing = [m for m in task.metric_names if m not in result]
    if missing:
        raise RuntimeError(
            f"metric module {name!r} ({config}) returned {sorted(result)}, task {task.name!r} needs {missing}"
        )
    return {m: float(result[m]) for m in task.metric_names}
