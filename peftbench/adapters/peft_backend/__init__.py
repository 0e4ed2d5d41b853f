"""peft as a second backend: peft's own tuner layers behind our Adapter interface (methods named `peft-<method>`).

The same targets as the native methods (the exact module names `find_targets` returns, so peft's suffix matching
never reaches the pooler), the task head trained and reported apart as everywhere, budgets solved against peft's
own parameter count, AdaLoRA's allocator on the `on_step_end` hook and its regulariser in `extra_loss`.

peft is an optional extra (`pip install 'peftbench[peft]'`); without it, loading any of these methods is a one-line
error saying so, and the native methods never import it."""

from __future__ import annotations

import importlib.util

from peftbench.errors import UsageError

INSTALL_HINT = "the peft-* methods need the optional peft package: pip install 'peftbench[peft]'"


def peft_installed() -> bool:
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked) reads as absent
        return False


# Checked when a method is loaded from its entry point, so `peftbench list` and `--method peft-...` say how to get
# peft instead of failing on first use deep inside a run.
if not peft_installed():
    raise UsageError(INSTALL_HINT)
