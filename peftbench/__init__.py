"""peftbench: benchmark parameter-efficient fine-tuning methods at fixed trainable-parameter budgets.

`peftbench.run(...)` and `peftbench.sweep(...)` are the Python API (peftbench/harness/api.py). They are loaded on
first use, so `import peftbench` stays cheap: not even `typing` is imported here."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "run", "sweep"]

# Type checkers take any name TYPE_CHECKING as true; at run time it is false and costs no import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from peftbench.harness.api import run, sweep


def __getattr__(name: str):
    if name in ("run", "sweep"):
        from peftbench.harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftbench' has no attribute {name!r}")
