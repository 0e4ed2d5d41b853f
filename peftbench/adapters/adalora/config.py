"""AdaLoRA's configuration and the resolution of its step schedule against a run's length."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peftbench.errors import UsageError

BUDGET_UNITS = ("auto", "triplets", "params")


@dataclass(frozen=True)
class AdaLoraConfig:
    init_r: int = field(
        default=12,
        metadata={"help": "initial rank of every adapted matrix; derived from target_budget when one is given"},
    )
    target_r: int = field(
        default=8,
        metadata={
            "help": "mean final rank per matrix, used only when target_budget is None: b(T) = target_r x matrices"
        },
    )
    alpha: float = field(default=32.0, metadata={"help": "scaling numerator: s = alpha / init_r (as peft)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    orth_reg_weight: float = field(
        default=0.1,
        metadata={
            "help": "gamma of the orthogonal regulariser gamma * R, R = mean over the 2*N matrices P and Q of "
            "||P^T P - I||_F and ||Q Q^T - I||_F (peft's average; the paper sums, so its gamma is ours / 2N)"
        },
    )
    orth_squared: bool = field(
        default=False,
        metadata={"help": "square each Frobenius norm in R as the paper writes it; peft (the default) does not"},
    )
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the sensitivity I-bar"})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of the uncertainty U-bar"})
    t_init: int | float = field(
        default=0.1,
        metadata={"help": "warm-up before any pruning: a fraction of the run (< 1) or a number of optimizer steps"},
    )
    t_final: int | float = field(
        default=0.2,
        metadata={"help": "final phase with ranks fixed: a fraction of the run (< 1) or a number of steps (>= 1)"},
    )
    delta_t: int | float = field(
        default=10,
        metadata={"help": "steps between two re-allocations while the budget shrinks (fraction of the run or count)"},
    )
    budget_unit: str = field(
        default="auto",
        metadata={
            "help": "'triplets': the budget counts singular triplets (the paper's and peft's allocator); "
            "'params': it counts parameters, a triplet of a d_out x d_in matrix costing d_in + d_out + 1, so a "
            "parameter budget is met within one triplet; 'auto': params for a budgeted run, triplets otherwise"
        },
    )
    target_budget: int | None = field(
        default=None,
        metadata={"help": "final budget b(T) in budget_unit (set by --budget); None: target_r per matrix"},
    )
    init_budget_ratio: float = field(
        default=1.5,
        metadata={"help": "with a target_budget, b(0) = ratio x b(T) (the paper's 1.5); it sets init_r"},
    )

    @property
    def unit(self) -> str:
        """The budget unit in force. A parameter budget (--budget) is met within one triplet only when counted in
        parameters, so that is the default with one; without one, the paper's triplet count (peft's behaviour)."""
        if self.budget_unit != "auto":
            return self.budget_unit
        return "params" if self.target_budget is not None else "triplets"

    def __post_init__(self) -> None:
        if self.init_r < 1:
            raise UsageError(f"AdaLoRA init_r must be >= 1, got {self.init_r}")
        if self.target_r < 1:
            raise UsageError(f"AdaLoRA target_r must be >= 1, got {self.target_r}")
        if self.target_budget is None and self.target_r > self.init_r:
            raise UsageError(f"AdaLoRA target_r={self.target_r} exceeds init_r={self.init_r}; use target_r <= init_r")
        if self.alpha <= 0:
            raise UsageError(f"AdaLoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"AdaLoRA dropout must be in [0, 1), got {self.dropout}")
        if self.orth_reg_weight < 0:
            raise UsageError(f"AdaLoRA orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise UsageError(f"AdaLoRA {name} must be in (0, 1), got {getattr(self, name)}")
        if self.budget_unit not in BUDGET_UNITS:
            raise UsageError(f"AdaLoRA budget_unit must be one of {list(BUDGET_UNITS)}, got {self.budget_unit!r}")
        if self.target_budget is not None and self.target_budget < 1:
            raise UsageError(f"AdaLoRA target_budget must be >= 1 or None, got {self.target_budget}")
        if self.init_budget_ratio < 1.0:
            raise UsageError(f"AdaLoRA init_budget_ratio must be >= 1, got {self.init_budget_ratio}")
        for name in ("t_init", "t_final", "delta_t"):
            _check_step_value(name, getattr(self, name))
        if self.delta_t == 0:
            raise UsageError("AdaLoRA delta_t must be > 0 (a fraction of the run or a number of steps >= 1)")


def _check_step_value(name: str, value: float | int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(
            f"AdaLoRA {name}={value!r}: give a fraction of the run (0 <= f < 1) or a step count (int >= 1)"
        )
    if value >= 1 and not float(value).is_integer():
        raise UsageError(f"AdaLoRA {name}={value!r}: values >= 1 are step counts and must be whole numbers")


def resolve_steps(value: float | int, total_steps: int) -> int:
    """A fraction (< 1) of the run, rounded half up, or a step count (>= 1) as is."""
    if value < 1:
        return int(value * total_steps + 0.5)
    return int(value)


@dataclass(frozen=True)
class Schedule:
    """The three phases in optimizer steps: warm-up (step <= t_init), cubic budget decay re-allocated every
    delta_t steps, then the final ranks fixed at step total_steps - t_final (peft's global_step semantics)."""

    total_steps: int
    t_init: int
    t_final: int
    delta_t: int

    @property
    def final_step(self) -> int:
        return self.total_steps - self.t_final


def resolve_schedule(config: AdaLoraConfig, total_steps: int) -> Schedule:
    """Resolve fractions against the run length; reject schedules that cannot work in a one-line UsageError."""
    if total_steps < 2:
        raise UsageError(f"AdaLoRA needs at least 2 optimizer steps to allocate ranks, the run has {total_steps}")
    t_i = resolve_steps(config.t_init, total_steps)
    t_f = resolve_steps(config.t_final, total_steps)
    d_t = max(1, resolve_steps(config.delta_t, total_steps))
    if t_f < 1 or t_i + t_f >= total_steps:
        raise UsageError(
            f"AdaLoRA schedule does not fit {total_steps} steps: t_init={config.t_init!r} ({t_i} steps) + "
            f"t_final={config.t_final!r} ({t_f} steps) must be < {total_steps} with t_final >= 1 step; "
            f"{_suggest(total_steps)}"
        )
    return Schedule(total_steps=total_steps, t_init=t_i, t_final=t_f, delta_t=d_t)


def _suggest(total_steps: int) -> str:
    t_i, t_f = int(0.1 * total_steps + 0.5), max(1, int(0.2 * total_steps + 0.5))
    if t_i + t_f >= total_steps:
        t_i, t_f = 0, 1
    return f"e.g. t_init={t_i} t_final={t_f} (any t_init + t_final <= {total_steps - 1}), or train for longer"
