"""AdaLoRA's budget: planning it from a config, solving it from a parameter count, and the rank allocator
(importance EMAs, cubic budget schedule, masking) that follows peft's RankAllocator step for step."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from peftbench.adapters.adalora.config import AdaLoraConfig, Schedule
from peftbench.adapters.adalora.layer import AdaLoraLinear
from peftbench.adapters.base import BudgetSolution, TargetMatrix, config_replace, fmt_count
from peftbench.errors import BudgetError, UsageError

logger = logging.getLogger(__name__)


def triplet_cost(t: TargetMatrix) -> int:
    return t.d_in + t.d_out + 1


@dataclass(frozen=True)
class BudgetPlan:
    """Initial rank per matrix and the schedule's end points b(0), b(T), both in `unit`."""

    unit: str
    init_ranks: dict[str, int]
    b0: int
    bT: int


def _size(ranks: dict[str, int], targets: list[TargetMatrix], unit: str) -> int:
    if unit == "triplets":
        return sum(ranks[t.name] for t in targets)
    return sum(ranks[t.name] * triplet_cost(t) for t in targets)


def _capped(targets: list[TargetMatrix], r: int) -> dict[str, int]:
    return {t.name: min(r, t.d_in, t.d_out) for t in targets}


def initial_rank(targets: list[TargetMatrix], config: AdaLoraConfig) -> int:
    """init_r, or with a target budget the smallest uniform rank (capped by each matrix's full rank) whose
    size reaches init_budget_ratio x b(T): ceil(b0 / n_matrices) when no cap bites."""
    if config.target_budget is None:
        return config.init_r
    wanted = config.init_budget_ratio * config.target_budget
    per_rank = len(targets) if config.unit == "triplets" else sum(triplet_cost(t) for t in targets)
    r, r_max = max(1, math.ceil(wanted / per_rank - 1e-9)), max(min(t.d_in, t.d_out) for t in targets)
    while r < r_max and _size(_capped(targets, r), targets, config.unit) < wanted:
        r += 1
    return min(r, r_max)


def plan_budget(targets: list[TargetMatrix], config: AdaLoraConfig) -> BudgetPlan:
    unit = config.unit
    ranks = _capped(targets, initial_rank(targets, config))
    b0 = _size(ranks, targets, unit)
    if config.target_budget is not None:
        bT = config.target_budget
    else:
        bT = _size({t.name: config.target_r for t in targets}, targets, unit)
    if bT > b0:
        raise UsageError(
            f"AdaLoRA's final budget {fmt_count(bT)} {unit} exceeds its initial {fmt_count(b0)}; "
            f"lower target_r/target_budget or raise init_r/init_budget_ratio"
        )
    return BudgetPlan(unit=unit, init_ranks=ranks, b0=b0, bT=bT)


def planned_count(targets: list[TargetMatrix], config: AdaLoraConfig) -> int:
    """Adapter parameters at the end of training, as planned: exact in 'params' mode (to within one triplet),
    b(T) at the mean triplet cost in 'triplets' mode (the allocator decides which matrices keep them)."""
    bT = config.target_budget if config.target_budget is not None else None
    if config.unit == "params":
        return bT if bT is not None else config.target_r * sum(triplet_cost(t) for t in targets)
    mean_cost = sum(triplet_cost(t) for t in targets) / len(targets)
    return round((bT if bT is not None else config.target_r * len(targets)) * mean_cost)


def peak_count(targets: list[TargetMatrix], config: AdaLoraConfig) -> int:
    """Adapter parameters at the initial ranks, before any triplet is pruned: the most the run ever trains."""
    return _size(plan_budget(targets, config).init_ranks, targets, "params")


def solve_budget(targets: list[TargetMatrix], budget: int, base: AdaLoraConfig) -> BudgetSolution:
    """The final budget b(T) that meets `budget` parameters. Sensible range: one triplet per matrix on average
    (the LoRA r=1 floor) up to every matrix at full rank; outside it a BudgetError names the nearest value."""
    # The unit is fixed here, so the recorded config says which allocator ran (auto: params, as a budget is given).
    unit = base.budget_unit if base.budget_unit != "auto" else "params"
    base = config_replace(base, budget_unit=unit)
    total_cost = sum(triplet_cost(t) for t in targets)
    mean_cost = total_cost / len(targets)
    full = sum(min(t.d_in, t.d_out) for t in targets)
    if unit == "triplets":
        lo, hi = total_cost, round(full * mean_cost)
    else:
        lo, hi = total_cost, sum(min(t.d_in, t.d_out) * triplet_cost(t) for t in targets)
    if not lo <= budget <= hi:
        raise BudgetError(
            f"adalora cannot reach a budget of {fmt_count(budget)} on these targets (one triplet per matrix "
            f"gives {fmt_count(lo)}, full rank gives {fmt_count(hi)}); nearest achievable: "
            f"{fmt_count(lo if budget < lo else hi)}"
        )
    if unit == "triplets":
        bT = min(max(round(budget / mean_cost), len(targets)), full)
        achieved = round(bT * mean_cost)
    else:
        bT = achieved = budget
    config = config_replace(base, target_budget=bT)
    r0 = initial_rank(targets, config)
    # Keep alpha / init_r constant when the budget moves init_r, so the update's scale does not depend on it.
    config = config_replace(config, init_r=r0, alpha=base.alpha * r0 / base.init_r)
    return BudgetSolution(config, achieved, f"b(T)={bT} {unit}, init_r={r0}")


class RankAllocator:
    """Importance-driven pruning of singular triplets over a run of `schedule.total_steps` optimizer steps.

    `step(t)` takes peft's `global_step`: the 0-based index of the optimizer step just taken (what the paper's
    trainer and peft's docstring pass, before incrementing their counter). So t runs 0 .. T-1, the final mask
    is fixed at t = T - t_final (hence t_final >= 1) and the last t_final - 1 steps train with it."""

    def __init__(
        self, layers: dict[str, AdaLoraLinear], plan: BudgetPlan, schedule: Schedule, beta1: float, beta2: float
    ) -> None:
        self.layers = layers
        self.plan = plan
        self.schedule = schedule
        self.beta1, self.beta2 = beta1, beta2
        self.finalised = False
        self.last_budget = plan.b0
        self.last_allocated = False
        # Every P, lambda and Q in one order; their EMAs are lists in the same order (see update_importance).
        self._tracked = [(name, key, p) for name, layer in layers.items() for key, p in self._params(layer).items()]
        self._index = {(name, key): i for i, (name, key, _) in enumerate(self._tracked)}
        self._ema_ipt: list[torch.Tensor] | None = None
        self._ema_unc: list[torch.Tensor] | None = None

    # --- schedule -------------------------------------------------------------------------------------------
    def budget_at(self, step: int) -> tuple[int, bool]:
        """(budget, whether to re-allocate) at global step `step`, exactly peft's budget_schedule."""
        s, b0, bT = self.schedule, self.plan.b0, self.plan.bT
        if step <= s.t_init:
            return b0, False
        if step > s.final_step:
            return bT, True
        mul = 1 - (step - s.t_init) / (s.final_step - s.t_init)
        return int((b0 - bT) * (mul**3) + bT), step % s.delta_t == 0

    # --- importance -----------------------------------------------------------------------------------------
    @staticmethod
    def _params(layer: AdaLoraLinear) -> dict[str, torch.nn.Parameter]:
        return {"P": layer.P, "lam": layer.lam, "Q": layer.Q}

    @torch.no_grad()
    def update_importance(self) -> None:
        """I = |theta * grad|; I-bar and U-bar as EMAs (U-bar uses the I-bar just updated, as peft does).

        Why _foreach: ~100-150 layers x 3 parameters x 10 small elementwise ops were thousands of dispatches
        per step (kernel launches on a GPU). Each op now runs once over the list of every parameter, in place
        on the EMAs, with the same operations in the same order and the same scalars, so the values are
        peft's bit for bit. (One flat vector over all parameters was slower on CPU: the copies into it and its
        temporaries are memory-bound at BERT-base sizes.)"""
        params = [p for _, _, p in self._tracked]
        # A parameter without a gradient (unused this step) counts as unimportant rather than crashing.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        ipt = torch._foreach_mul(params, grads)
        torch._foreach_abs_(ipt)
        if self._ema_ipt is None or self._ema_unc is None:
            self._ema_ipt = [torch.zeros_like(p) for p in params]
            self._ema_unc = [torch.zeros_like(p) for p in params]
        e, u = self._ema_ipt, self._ema_unc
        # beta * ema and (1 - beta) * new are rounded apart before the sum, as peft writes them (no fused alpha).
        torch._foreach_mul_(e, self.beta1)
        torch._foreach_add_(e, torch._foreach_mul(ipt, 1 - self.beta1))
        torch._foreach_sub_(ipt, e)
        torch._foreach_abs_(ipt)
        torch._foreach_mul_(ipt, 1 - self.beta2)
        torch._foreach_mul_(u, self.beta2)
        torch._foreach_add_(u, ipt)

    def reset_importance(self) -> None:
        self._ema_ipt = self._ema_unc = None

    def importance(self, name: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(I-bar, U-bar) of one parameter ('P', 'lam' or 'Q') of one layer, for inspection and tests; updated
        in place by the next update_importance."""
        if self._ema_ipt is None or self._ema_unc is None:
            raise KeyError(f"no importance recorded yet for {name}.{key}")
        i = self._index[name, key]
        return self._ema_ipt[i], self._ema_unc[i]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """s(lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji); grouped as peft adds them, so scores match bitwise."""
        if self._ema_ipt is None or self._ema_unc is None:
            return {name: torch.zeros_like(layer.lam) for name, layer in self.layers.items()}
        score = torch._foreach_mul(self._ema_ipt, self._ema_unc)
        scores = {}
        for name in self.layers:
            s_q = torch.mean(score[self._index[name, "Q"]], dim=1)
            s_p = torch.mean(score[self._index[name, "P"]], dim=0)
            scores[name] = score[self._index[name, "lam"]] + (s_q + s_p)
        return scores

    # --- masking --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        scores = self.triplet_scores()
        names = list(scores)
        flat = torch.cat([scores[n].reshape(-1) for n in names])
        if self.plan.unit == "triplets":
            k = self.plan.b0 - budget
            # peft's kthvalue would fail at k = 0 (nothing to prune): keep everything then.
            keep = flat > torch.kthvalue(flat, k)[0] if k > 0 else torch.ones_like(flat, dtype=torch.bool)
        else:
            # Greedy by score: the best triplets while their total parameter cost fits the budget.
            costs = torch.cat(
                [torch.full((self.layers[n].r,), self.layers[n].triplet_cost, device=flat.device) for n in names]
            )
            order = torch.argsort(flat, descending=True, stable=True)
            n_keep = int((costs[order].cumsum(0) <= budget).sum().item())
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[order[:n_keep]] = True
        offset = 0
        for n in names:
            layer = self.layers[n]
            layer.kept.copy_(keep[offset : offset + layer.r])
            layer.apply_mask()
            offset += layer.r

    def reapply_mask(self) -> None:
        for layer in self.layers.values():
            layer.apply_mask()

    def step(self, step: int) -> int:
        """peft's AdaLoraModel.update_and_allocate(global_step=step); returns the scheduled budget."""
        final = self.schedule.final_step
        self.last_allocated = False
        if step < final:
            self.update_importance()
            budget, do_mask = self.budget_at(step)
            if do_mask:
                self.mask_to_budget(budget)
                self.last_allocated = True
        elif not self.finalised:
            # Normally step == final; a later step only if the runner skipped it, which still must fix the mask.
            budget = self.plan.bT
            self.mask_to_budget(budget)
            self.last_allocated = True
            self.finalised = True
            self.reset_importance()
            logger.info("AdaLoRA ranks fixed at step %d: %d triplets kept", step, self.retained_triplets)
        else:
            # The optimizer moved the pruned values off zero; the final pattern is fixed, so zero them again.
            budget = self.plan.bT
            self.reapply_mask()
        self.last_budget = budget
        return budget

    # --- counts ---------------------------------------------------------------------------------------------
    @property
    def retained_triplets(self) -> int:
        return sum(layer.rank for layer in self.layers.values())

    @property
    def retained_params(self) -> int:
        return sum(layer.rank * layer.triplet_cost for layer in self.layers.values())

    @property
    def peak_params(self) -> int:
        return sum(layer.r * layer.triplet_cost for layer in self.layers.values())
