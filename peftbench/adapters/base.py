"""The one contract every method (built-in or plugin) fulfils; the runner calls nothing else."""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from peftbench.errors import BudgetError

if TYPE_CHECKING:
    from peftbench.adapters.peft_format import PeftExport

# Modules trained by every method and reported apart from the adapter budget.
HEAD_MODULES: tuple[str, ...] = ("classifier", "qa_outputs", "score")
# Transformer blocks are numbered (encoder.layer.3.attention...); only Linear layers inside them are targets,
# so the pooler and the task head are never wrapped.
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class ParamReport:
    trainable: int
    adapter: int
    head: int
    total: int
    # AdaLoRA only: the adapter count before pruning (its peak); `adapter` is what is retained at the end.
    adapter_peak: int | None = None


@dataclass(frozen=True)
class TargetMatrix:
    """An nn.Linear to adapt: its module path and weight shape (d_out x d_in)."""

    name: str
    d_in: int
    d_out: int

    @property
    def layer(self) -> int | None:
        return block_index(self.name)

    @property
    def kind(self) -> str:
        """Module type without the layer prefix, e.g. 'attention.self.query'."""
        m = _LAYER_INDEX.search("." + self.name + ".")
        return self.name[m.end() - 1 :] if m else self.name


@dataclass(frozen=True)
class ApplyPlan:
    """What `apply` needs to know up front (AdaLoRA's schedule depends on the total number of steps)."""

    total_steps: int
    targets: tuple[str, ...]
    head_modules: tuple[str, ...] = HEAD_MODULES


@dataclass(frozen=True)
class BudgetSolution:
    config: Any
    achieved: int
    detail: str
    # The achievable counts on either side of the request (the knob values next to it), where the method searched
    # a knob whose steps are uneven; None where the step is the method's fixed per-rank cost.
    neighbours: tuple[int, int] | None = None


def block_index(name: str) -> int | None:
    """Index of the numbered transformer block a module or parameter path lies in, None outside the blocks."""
    m = _LAYER_INDEX.search("." + name + ".")
    return int(m.group(1)) if m else None


def is_head_param(name: str, head_modules: tuple[str, ...] = HEAD_MODULES) -> bool:
    return name.split(".", 1)[0] in head_modules


def find_targets(model: nn.Module, targets: tuple[str, ...], head_modules: tuple[str, ...] = HEAD_MODULES):
    """Linear layers inside numbered blocks whose path ends with one of `targets` (e.g. 'query', 'dense')."""
    found: list[TargetMatrix] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or is_head_param(name, head_modules):
            continue
        if block_index(name) is None:
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            found.append(TargetMatrix(name, module.in_features, module.out_features))
    return found


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def freeze_all_but_head(model: nn.Module, head_modules: tuple[str, ...] = HEAD_MODULES) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(is_head_param(name, head_modules))


def store_frozen_as(model: nn.Module, dtype: torch.dtype, head_modules: tuple[str, ...] = HEAD_MODULES) -> int:
    """Store every frozen floating-point weight matrix outside the head (Linear weights, embedding tables) in
    `dtype` (bf16 for autocast), in place; returns how many were cast. Trainable parameters (adapters, the
    head, everything under full fine-tuning) keep their dtype, as their optimizer needs float32 master values.

    Why: autocast casts a weight that requires no gradient again at every call (its cast cache holds only
    leaves that require grad), so a frozen float32 model pays a weight-sized cast per layer per step for a
    weight that never changes; stored once in bf16 it is read as is. Vectors (biases, LayerNorm's scale and
    shift) stay as they are: casting them saves nothing, and CPU LayerNorm rejects bf16 parameters on a float32
    input, which is what follows a DoRA layer (its output is float32, as peft's). Call it after
    `Adapter.apply` (which decides what is frozen) and run the model under autocast."""
    cast = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or p.dim() < 2 or not p.is_floating_point() or p.dtype == dtype:
                continue
            if is_head_param(name, head_modules):
                continue
            # Assigning .data keeps the Parameter object, so tied weights stay tied and references stay valid.
            p.data = p.data.to(dtype)
            cast += 1
    return cast


def head_in_float32(model: nn.Module, head_modules: tuple[str, ...] = HEAD_MODULES) -> int:
    """Run the task head (the last Linear: class logits, a regression score, span logits) in float32 even under
    autocast, in place; returns how many head modules were wrapped.

    Why: under bf16 autocast a Linear returns bf16, whose 8 significant bits space values near an STS-B score
    of 2.7 by 0.016 and span logits near 8 by 0.06, so the predictions of a model whose outputs differ by less
    than that collapse to one value (a constant STS-B prediction has no correlation at all) and argmax breaks
    ties by position; the loss is then taken on those rounded values too. The head is a few hundred
    multiply-adds per example, so float32 costs nothing measurable. peft's wrapper of a saved head
    (ModulesToSaveWrapper) is named like the head and is wrapped as a whole."""
    wrapped = 0
    for name, module in model.named_modules():
        if name.rpartition(".")[2] not in head_modules or getattr(module, "_peftbench_fp32", False):
            continue
        module.forward = _float32_forward(module.forward)
        module._peftbench_fp32 = True
        wrapped += 1
    return wrapped


def _float32_forward(forward):
    def run(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(x.float() if x.is_floating_point() else x, *args, **kwargs)

    return run


def count_params(model: nn.Module, head_modules: tuple[str, ...] = HEAD_MODULES) -> ParamReport:
    trainable = head = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if is_head_param(name, head_modules):
                head += p.numel()
    return ParamReport(trainable=trainable, adapter=trainable - head, head=head, total=total)


def solve_integer_rank(
    method: str, budget: int, per_rank: int, fixed: int, max_rank: int, field: str = "r"
) -> tuple[int, int]:
    """Rank r minimising |fixed + r*per_rank - budget|, within [1, max_rank]; else a BudgetError with the
    nearest achievable count. Returns (rank, achieved)."""
    lo, hi = fixed + per_rank, fixed + per_rank * max_rank
    if budget < lo // 2 or budget > hi * 3 // 2 or budget <= 0:
        nearest = lo if budget < lo else hi
        raise BudgetError(
            f"{method} cannot reach a budget of {fmt_count(budget)} on these targets "
            f"({field}=1 gives {fmt_count(lo)}, {field}={max_rank} gives {fmt_count(hi)}); "
            f"nearest achievable: {fmt_count(nearest)}"
        )
    r = min(max(round((budget - fixed) / per_rank), 1), max_rank)
    return r, fixed + r * per_rank


def fmt_count(n: float, m_decimals: int | None = None) -> str:
    """A parameter count for people. Messages: 3 significant digits. Tables and plots (`m_decimals`): millions
    from 100K up with that many decimals, else thousands with one, so a column lines up."""
    if m_decimals is not None:
        return f"{n / 1e6:.{m_decimals}f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.3g}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.3g}K"
    return str(int(n))


class Adapter(ABC):
    """A fine-tuning method. One instance per run; it may keep state (AdaLoRA's allocator) between hooks."""

    name: ClassVar[str]
    # How tables and reports spell it ("LoRA"); the registry name when unset.
    display_name: ClassVar[str] = ""
    # `peftbench list`'s line for it; the first line of its module's docstring when unset.
    summary: ClassVar[str] = ""
    # Whose code runs the method: "native" (ours) or "peft" (peft's tuner layers); records and tables say which.
    implementation: ClassVar[str] = "native"
    config_cls: ClassVar[type]
    # Learning rate used when the user sets none; part of the resolved (hashed) config.
    default_lr: ClassVar[float] = 1e-3
    # `peftbench tune`'s default grid (setting -> values); empty: the default learning rate alone.
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    # False for the unbudgeted reference (full fine-tuning).
    budgeted: ClassVar[bool] = True
    # True for the method others are compared with at the same budget (LoRA): reports and perf pick it by this.
    is_reference: ClassVar[bool] = False
    # True for the linear probe (only the head trains): the floor tables and plots draw every method against.
    is_probe: ClassVar[bool] = False
    # True where every weight outside the head trains (full fine-tuning): its adapter count is the base model's.
    trains_base: ClassVar[bool] = False
    # The config fields `for_budget` sets: a `--set` of one of them next to `--budget` would be overwritten
    # silently, so planning rejects the pair.
    budget_knobs: ClassVar[tuple[str, ...]] = ()
    # `peftbench perf`: the step time this method should stay within, as a multiple of the frozen model's (the
    # floor); None sets no target. `perf_note` says where its time over the floor goes, for a missed target.
    perf_floor_limit: ClassVar[float | None] = None
    perf_note: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def apply(self, model: nn.Module, plan: ApplyPlan) -> nn.Module:
        """Wrap target modules in place, freeze the rest (the head stays trainable), return the model."""

    @classmethod
    def check_plan(cls, config: Any, plan: ApplyPlan) -> None:
        """Reject a config that cannot work with this plan (e.g. a schedule longer than the run), before any
        model is loaded. Raise UsageError with a one-line message saying which values would work."""

    def param_report(self, model: nn.Module) -> ParamReport:
        return count_params(model)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """After optimizer.step(), before zero_grad(); only on steps where gradients were synced.
        `step` is the 0-based index of the optimizer step just taken (0 .. plan.total_steps - 1)."""

    def step_scalars(self) -> dict[str, float]:
        """Scalars worth watching step by step (AdaLoRA: its budget b(t) and the triplets it keeps), after
        `on_step_end`. Read only on logged steps and only when a tracker is on (`--log-to`), so reading them
        may cost a device sync."""
        return {}

    # The wrapper layer this method puts on its targets, when it has one with a `merge()`: the default `merge`
    # folds every such layer into its base weight.
    layer_cls: ClassVar[type | None] = None

    def merge(self, model: nn.Module) -> nn.Module:
        if self.layer_cls is not None:
            for m in model.modules():
                if isinstance(m, self.layer_cls):
                    m.merge()
        return model

    def diagnostics(self) -> dict:
        return {}

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (torch's format: params, lr, weight_decay). The default is one group
        of every trainable parameter; a method whose parameters want different learning rates (LoRA+) splits
        them here, so the runner builds every optimizer the same way."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    @classmethod
    def adapter_count(cls, targets: list[TargetMatrix], config: Any) -> int:
        """Adapter parameters (head excluded) this config will have at the end of training."""
        raise NotImplementedError(f"{cls.__name__} does not count budgets")

    @classmethod
    def peak_adapter_count(cls, targets: list[TargetMatrix], config: Any) -> int | None:
        """Adapter parameters at their largest during training, where that is more than the final count
        (AdaLoRA's initial ranks, pruned later); None where the count never changes."""
        return None

    @classmethod
    def table_note(cls, method_config: dict[str, Any]) -> str:
        """A short note tables print beside this method's rows when its config changes what the row means
        (e.g. a budget met only on average); "" for none. Takes the stored config, as old records have it."""
        return ""

    @classmethod
    def for_budget(cls, targets: list[TargetMatrix], budget: int, base: Any) -> BudgetSolution:
        """Solve this method's hyper-parameters so its adapter count meets `budget`."""
        raise BudgetError(f"method {cls.name!r} takes no budget; drop --budget for it")

    def peft_export(self, model: nn.Module) -> PeftExport | None:
        """The trained adapter and head in peft's on-disk format (see adapters.peft_format), for
        `PeftModel.from_pretrained` on the untouched base model; None where this method is not written that way
        (the runner then saves the trainable parameters in peftbench's own layout). Call it before any merge."""
        return None

    @classmethod
    def peft_twin(cls, config: Any, target_modules: str, task_type: str, total_steps: int) -> PeftTwin | None:
        """The same method as peft builds it (for perf's side-by-side and its Trainer peer), or None where peft
        has no such method. `target_modules` is a regex of the exact module names this method adapts."""
        return None


@dataclass(frozen=True)
class PeftTwin:
    """A peft config equal to one of our methods' configs, and what peft needs after each optimizer step."""

    config: Any
    on_step_end: Any = None  # (peft_model, step) -> None


def config_replace(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, **changes)
