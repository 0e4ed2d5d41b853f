"""From what the user asked for to a resolved, hashable RunConfig: names looked up, model resolved, `--set`
applied, budget solved. Everything here runs before any training, so bad input fails fast."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from peftbench import registry
from peftbench.adapters.base import ApplyPlan, TargetMatrix, find_targets, is_head_param
from peftbench.config import (
    PROFILES,
    ModelRef,
    RunConfig,
    TrainConfig,
    apply_overrides,
    parse_budget,
    run_config_from_dict,
    split_overrides,
    to_jsonable,
)
from peftbench.errors import BudgetError, UsageError
from peftbench.harness.run.data import count_rows, data_fingerprint, dev_split, load_rows, split_file, validation_keys
from peftbench.harness.run.devices import parse_device
from peftbench.harness.run.models import resolve_model
from peftbench.harness.run.precision import PRECISIONS, choose_precision
from peftbench.harness.run.train import plan_steps
from peftbench.recipes import load_recipe
from peftbench.registry import unknown_name_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    task: str
    method: str
    seed: int = 0
    model: str = "minilm-l6"
    data: str = "sample"
    budget: str | None = None
    sets: tuple[str, ...] = ()
    profile: str = "quick"
    # Where it will run: `precision=auto` is resolved for this device, so the config (and its hash) says what ran.
    device: str = "auto"


@dataclass(frozen=True)
class ModelShape:
    targets: tuple[TargetMatrix, ...]
    base_params: int  # the base model without the task head: what a percentage budget refers to


@functools.lru_cache(maxsize=32)
def _cached_model(name: str) -> ModelRef:
    return resolve_model(name)


@functools.lru_cache(maxsize=64)
def model_shape(model: ModelRef, task_name: str, targets: tuple[str, ...]) -> ModelShape:
    """Target shapes from the architecture alone: the model is built on the meta device, no weights read."""
    import torch
    from transformers import AutoConfig

    task = registry.tasks.get(task_name)
    try:
        hf_config = AutoConfig.from_pretrained(model.path, revision=model.revision, **task.model_kwargs())
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot read the model config of {model.name!r} ({type(e).__name__}); "
            f"pass a model directory with config.json or a reachable hub id"
        ) from None
    with torch.device("meta"):
        skeleton = task.model_class().from_config(hf_config)
    found = find_targets(skeleton, targets)
    if not found:
        raise UsageError(
            f"no nn.Linear of {model.name!r} matches targets {list(targets)}; "
            f"set train targets, e.g. --set targets=query,value"
        )
    base = sum(p.numel() for n, p in skeleton.named_parameters() if not is_head_param(n))
    return ModelShape(tuple(found), base)


def count_train_rows(task, data: str, cap: int, dev_rows: int = 0) -> int | None:
    if data == "hub":
        return None
    n = count_rows(split_file(task, data, task.train_split))
    if dev_rows:
        # Exact, as groups of equal content move together: the same cut the runner makes.
        rows = load_rows(task, data, task.train_split)
        n = len(dev_split(task, rows, dev_rows, validation_keys(task, data))[0])
    return min(n, cap) if cap else n


def resolve(req: RunRequest) -> RunConfig:
    task = registry.tasks.get(req.task)
    adapter_cls = registry.adapters.get(req.method)
    if req.profile not in PROFILES:
        raise UsageError(unknown_name_message("profile", req.profile, sorted(PROFILES)))
    model = _cached_model(req.model)
    recipe = load_recipe(req.profile)
    # The recipe first, so that the user's --set wins; both end up in the config the hash covers.
    recipe_sets = recipe.sets(task.name, req.method) if recipe else ()
    m_over, t_over = split_overrides([*recipe_sets, *req.sets], adapter_cls.config_cls, req.method)
    base = TrainConfig(**{**PROFILES[req.profile], **task.profile_settings(req.profile)})
    train = apply_overrides(TrainConfig, base, t_over, "train")
    if train.lr <= 0:
        train = dataclasses.replace(train, lr=adapter_cls.default_lr)
    if train.max_length <= 0:
        train = dataclasses.replace(train, max_length=task.max_length)
    _check_train(train)
    choice = choose_precision(train.precision, parse_device(req.device))
    train = dataclasses.replace(train, precision=choice.precision)
    method_cfg = apply_overrides(adapter_cls.config_cls, adapter_cls.config_cls(), m_over, req.method)
    data_hash = data_fingerprint(task, req.data)
    requested = None
    if req.budget is not None:
        if not adapter_cls.budgeted:
            raise BudgetError(f"method {req.method!r} is the unbudgeted reference; drop --budget for it")
        user_m_over = split_overrides(list(req.sets), adapter_cls.config_cls, req.method)[0]
        solved = sorted(set(user_m_over) & set(adapter_cls.budget_knobs))
        if solved:
            raise BudgetError(
                f"--budget {req.budget} solves {req.method}'s {', '.join(solved)}, so --set "
                f"{' '.join(f'{k}={m_over[k]}' for k in solved)} would be ignored; drop one of them"
            )
        shape = model_shape(model, task.name, train.targets)
        requested = parse_budget(req.budget, shape.base_params)
        method_cfg = adapter_cls.for_budget(list(shape.targets), requested, method_cfg).config
    n_rows = count_train_rows(task, req.data, train.train_rows, train.dev_rows)
    if n_rows is not None and task.one_feature_per_row:
        # Span tasks have more features than rows; the runner checks again with the exact count.
        adapter_cls.check_plan(method_cfg, ApplyPlan(plan_steps(n_rows, train), train.targets))
    return RunConfig(
        task=task.name,
        method=req.method,
        seed=req.seed,
        model=model,
        data=req.data,
        data_hash=data_hash,
        method_config=to_jsonable(method_cfg),
        train=train,
        budget=req.budget,
        budget_requested=requested,
        profile=req.profile,
        task_version=task.version,
    )


def method_config_of(cfg: RunConfig):
    adapter_cls = registry.adapters.get(cfg.method)
    c = adapter_cls.config_cls
    values = {}
    hints = {f.name: f for f in dataclasses.fields(c)}
    for k, v in cfg.method_config.items():
        values[k] = tuple(v) if isinstance(v, list) and k in hints else v
    return c(**values)


def _check_train(t: TrainConfig) -> None:
    for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size"):  # max_length resolved by now
        if getattr(t, name) < 1:
            raise UsageError(f"train setting {name} must be >= 1, got {getattr(t, name)}")
    if t.dev_rows < 0:
        raise UsageError(f"dev_rows must be >= 0, got {t.dev_rows}")
    if t.epochs <= 0 and t.max_steps <= 0:
        raise UsageError("set epochs > 0 or max_steps > 0")
    if t.precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if not 0 <= t.warmup_ratio < 1:
        raise UsageError(f"warmup_ratio must be in [0, 1), got {t.warmup_ratio}")


# Within one budget, every method's count should be this close to the request for a fair comparison.
MATCH_TOLERANCE = 0.05


def planned_adapter_count(cfg: RunConfig) -> int | None:
    """The adapter count the solved config promises at the end of training (AdaLoRA in triplet mode: its
    expected final count); None where the method cannot say before training."""
    adapter_cls = registry.adapters.get(cfg.method)
    shape = model_shape(cfg.model, cfg.task, cfg.train.targets)
    if adapter_cls.trains_base:
        return shape.base_params
    try:
        return adapter_cls.adapter_count(list(shape.targets), method_config_of(cfg))
    except NotImplementedError:
        return None


def planned_peak_count(cfg: RunConfig) -> int | None:
    """The most adapter parameters the run trains at once, where more than the final count (AdaLoRA's initial
    ranks); None otherwise."""
    adapter_cls = registry.adapters.get(cfg.method)
    shape = model_shape(cfg.model, cfg.task, cfg.train.targets)
    return adapter_cls.peak_adapter_count(list(shape.targets), method_config_of(cfg))


def budget_mismatches(configs: list[RunConfig]) -> list[str]:
    """One line per (task, method, budget) whose planned count is off the request by more than the tolerance."""
    out, seen = [], set()
    for cfg in configs:
        key = (cfg.task, cfg.method, cfg.budget)
        if key in seen or cfg.budget_requested is None:
            continue
        seen.add(key)
        got = planned_adapter_count(cfg)
        if got is None:
            continue
        off = (got - cfg.budget_requested) / cfg.budget_requested
        if abs(off) > MATCH_TOLERANCE:
            out.append(f"{cfg.task}/{cfg.method} @ {cfg.budget}: {got:,} planned, {off:+.1%} off the request")
    return out


def load_resolved(path: str) -> RunConfig:
    """A resolved config written by the sweep: plain JSON into the typed dataclasses (unknown keys rejected)."""
    try:
        return run_config_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsageError(f"cannot use resolved config {path} ({type(e).__name__}: {e}); rerun the sweep") from None
