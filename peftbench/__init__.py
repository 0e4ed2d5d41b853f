"""peftbench: benchmark parameter-efficient fine-tuning methods at fixed trainable-parameter budgets.

`peftbench.run(...)` and `peftbench.sweep(...)` are the Python API (peftbench/harness/api.py). They are loaded on
first use, so `import peftbench` stays cheap (no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "run", "sweep"]

if TYPE_CHECKING:
    from peftbench.harness.api import run, sweep


def __getattr__(name: str) -> Any:
    if name in ("run", "sweep"):
        from peftbench.harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftbench' has no attribute {name!r}")
