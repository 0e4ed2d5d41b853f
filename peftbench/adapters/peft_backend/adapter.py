"""One Adapter for every peft tuner: a method is a subclass that names peft's config class, maps its own frozen
config onto it and, when budgeted, says which knob sizes it.

peft's tuner class is built directly on the stock transformers model (what `inject_adapter_in_model` does, but
keeping the tuner, which holds AdaLoRA's allocator and the shared state of VeRA-like methods), so the model the
runner trains is still the transformers model: parameter names, the task head and the loss are the same as under
a native method, and nothing of peft's PeftModel wrapper (modules_to_save copies of the head, a loss changed
inside forward) is in the way."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from peftbench.adapters.base import (
    HEAD_MODULES,
    Adapter,
    ApplyPlan,
    BudgetSolution,
    ParamReport,
    TargetMatrix,
    config_replace,
    count_params,
    find_targets,
    is_head_param,
)
from peftbench.adapters.peft_backend.budget import peft_count, solve
from peftbench.errors import UsageError

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"


def exact_names(names: Sequence[str]) -> str:
    """A regex peft fullmatches against module paths: exactly these modules. A list of names would be matched by
    suffix, and `dense` would then also reach `bert.pooler.dense`."""
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def peft_module():
    import peft

    return peft


def tuner_class(peft_config: Any) -> type:
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    return PEFT_TYPE_TO_TUNER_MAPPING[peft_config.peft_type]


class PeftAdapter(Adapter):
    """A peft tuner as a method. Subclasses set `peft_config_name`, `config_cls` and `peft_kwargs`; budgeted ones
    `budget_knobs` (the first is searched) and `knob_values`."""

    implementation = "peft"
    # The name of peft's config class (looked up on the installed peft, so an older peft gives a clear error).
    peft_config_name: ClassVar[str]
    # Where the budget skeleton is built: "meta" unless peft's initialisation needs real numbers (e.g. nonzero()).
    count_device: ClassVar[str] = "meta"
    # True where a layer's adapter size depends on its own shape only, so counting one layer per shape is exact;
    # False for tuners whose layers share state sized by the whole model (VeRA's projections).
    count_by_shape: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.tuner: nn.Module | None = None
        self.names: list[str] = []
        self._head_modules: tuple[str, ...] = ()

    # --- what a method says --------------------------------------------------------------------------------

    @classmethod
    def peft_kwargs(cls, config: Any, names: list[str], total_steps: int) -> dict[str, Any]:
        """peft config arguments from ours (target_modules is added by the caller)."""
        raise NotImplementedError

    def select(self, model: nn.Module, plan: ApplyPlan) -> list[str]:
        """Paths of the modules peft wraps: the plan's target Linears, as for every native method."""
        return [t.name for t in find_targets(model, plan.targets, plan.head_modules)]

    @classmethod
    def knob_values(cls, targets: list[TargetMatrix], base: Any) -> Sequence[int]:
        """The values the budget search may give the knob, ascending."""
        raise NotImplementedError

    @classmethod
    def with_knob(cls, base: Any, value: int, targets: list[TargetMatrix]) -> Any:
        """`base` with the knob set to `value` (and whatever must follow it)."""
        return config_replace(base, **{cls.budget_knobs[0]: value})

    # --- building ------------------------------------------------------------------------------------------

    @classmethod
    def peft_config(cls, config: Any, names: list[str], total_steps: int) -> Any:
        peft = peft_module()
        config_cls = getattr(peft, cls.peft_config_name, None)
        if config_cls is None:
            raise UsageError(
                f"method {cls.name!r} needs peft's {cls.peft_config_name}, which peft {peft.__version__} does not "
                "have; upgrade peft (pip install -U peft)"
            )
        return config_cls(target_modules=exact_names(names), **cls.peft_kwargs(config, names, total_steps))

    @classmethod
    def build_tuner(cls, model: nn.Module, names: list[str], config: Any, total_steps: int) -> nn.Module:
        """peft's tuner on `model`, modified in place; only the adapter is trainable afterwards (peft's rule)."""
        try:
            peft_config = cls.peft_config(config, names, total_steps)
            return tuner_class(peft_config)(model, peft_config, adapter_name=ADAPTER_NAME)
        except (ValueError, TypeError) as e:  # peft rejects a value or a layer shape: one line, not its traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"{cls.name}: peft refused the config ({first}); check --set values") from None

    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        names = self.select(model, plan)
        if not names:
            raise UsageError(f"{self.name}: no module of the model matches targets {list(plan.targets)}; "
                             "check --set targets=...")  # fmt: skip
        self.tuner = self.build_tuner(model, names, self.config, plan.total_steps)
        wrapped = sorted(getattr(self.tuner, "targeted_module_names", names))
        if wrapped != sorted(names):
            raise UsageError(f"{self.name}: peft wrapped {len(wrapped)} modules, not the {len(names)} targets")
        # peft froze everything but its layers; the head trains under every method.
        for n, p in model.named_parameters():
            if is_head_param(n, plan.head_modules):
                p.requires_grad_(True)
        self.names, self._head_modules = names, plan.head_modules
        log.debug("%s: peft %s on %d modules", self.name, self.peft_config_name, len(names))
        return model

    # --- the rest of the interface -------------------------------------------------------------------------

    def param_report(self, model: nn.Module) -> ParamReport:
        return count_params(model, self._head_modules or HEAD_MODULES)

    def merge(self, model: nn.Module) -> nn.Module:
        if self.tuner is None:
            raise UsageError(f"{self.name}: merge() before apply()")
        self.tuner.merge_adapter()
        return model

    def diagnostics(self) -> dict:
        if self.tuner is None:
            return {}
        return {"peft_version": peft_module().__version__, "peft_config": self.peft_config_name,
                "wrapped_modules": len(self.names)}  # fmt: skip

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: Any) -> int:
        if not cls.budgeted:
            raise NotImplementedError(f"{cls.__name__} does not count budgets")
        return peft_count(cls, tuple(targets), config)

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: Any) -> BudgetSolution:
        if not cls.budgeted:
            return super().for_budget(targets, budget, base)
        return solve(cls, targets, budget, base)
