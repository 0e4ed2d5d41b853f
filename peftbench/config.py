"""Run configuration: frozen dataclasses, `--set` parsing, canonical JSON and the config hash."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from peftbench.errors import UsageError
from peftbench.registry import unknown_name_message

DEFAULT_TARGETS: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = field(default=1.0, metadata={"help": "passes over the training rows"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: use epochs)"})
    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step, before accumulation"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    lr: float = field(default=0.0, metadata={"help": "peak learning rate (0: the method's default)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of steps with linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    max_length: int = field(default=0, metadata={"help": "tokens per example, SQuAD: window length (0: task's)"})
    train_rows: int = field(default=0, metadata={"help": "use at most this many training rows (0: all)"})
    eval_rows: int = field(default=0, metadata={"help": "evaluate on at most this many rows per split (0: all)"})
    eval_every: int = field(default=0, metadata={"help": "also evaluate every N optimizer steps (0: only at the end)"})
    dev_rows: int = field(
        default=0,
        metadata={
            "help": "hold out this many training rows (chosen by content hash) as a dev split and evaluate on it "
            "instead of the validation splits: what `peftbench tune` chooses settings on (0: off)"
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch"})
    group_by_length: bool = field(default=True, metadata={"help": "length-grouped batches (less padding)"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | bf16 | fp16 (GPU only). auto: bf16 on GPUs with it (else fp16), on CPUs only where "
            "bf16 matmul is native (AMX, AVX512-BF16) and measured faster; resolved when the run is planned"
        },
    )
    targets: tuple[str, ...] = field(
        default=DEFAULT_TARGETS, metadata={"help": "Linear modules to adapt (name suffixes)"}
    )


# Settings newer than the first records, left out of the config hash at their default value, so the records made
# before they existed keep their identity (a sweep reuses them) and only runs that set them get a new hash.
_HASHED_ONLY_WHEN_SET: dict[str, Any] = {"dev_rows": 0}
_METHOD_HASHED_ONLY_WHEN_SET: dict[str, Any] = {"init": "kaiming", "lr_ratio": 1.0}

# Training profiles: named starting points for TrainConfig; --set overrides them field by field.
PROFILES: dict[str, dict[str, Any]] = {
    # make bench on 2 CPU cores: a few minutes per run on the SST-2 sample.
    "quick": {"epochs": 1.0, "train_rows": 4000},
    # the whole bundled sample, three epochs: closer to published recipes, for machines with time.
    "standard": {"epochs": 3.0},
    # the CI regression suite (`make regress`: 2 tasks x 4 methods x 2 seeds): on SST-2 80 steps of 8 examples,
    # ~10 s per run on 2 CPU cores, reaching ~0.74 accuracy, enough for a broken method or schedule to show.
    # QNLI, the suite's pair task, overrides it in its TaskSpec (pairs need more rows before anything is learnt).
    # fp32 on every machine: the baseline must reproduce bit for bit wherever CI runs, with or without native bf16.
    "regress": {
        "epochs": 1.0,
        "train_rows": 640,
        "batch_size": 8,
        "max_length": 48,
        "eval_rows": 500,
        "precision": "fp32",
    },
}


@dataclass(frozen=True)
class ModelRef:
    """The model as resolved: what the user typed, where it loads from, and what identifies its weights."""

    name: str
    path: str
    model_id: str
    revision: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class RunConfig:
    task: str
    method: str
    seed: int
    model: ModelRef
    data: str
    data_hash: str
    method_config: dict[str, Any]
    train: TrainConfig
    budget: str | None = None
    budget_requested: int | None = None
    profile: str = "quick"
    task_version: str = "1"

    def hash_payload(self) -> dict[str, Any]:
        # The load path is where the weights happen to be on this machine, not what they are.
        d = to_jsonable(self)
        d["model"].pop("path", None)
        d["model"].pop("name", None)
        # Settings added after records existed count only when set, so older records keep their identity.
        for section, added in (("train", _HASHED_ONLY_WHEN_SET), ("method_config", _METHOD_HASHED_ONLY_WHEN_SET)):
            for key, default in added.items():
                if key in d[section] and d[section][key] == default:
                    d[section].pop(key)
        return d

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.hash_payload()).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        budget = f" @{self.budget}" if self.budget else ""
        return f"{self.task}/{self.method}{budget} seed {self.seed}"


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    d = dict(d)
    if "targets" in d:
        d["targets"] = tuple(d["targets"])
    return TrainConfig(**d)


def run_config_from_dict(d: dict[str, Any]) -> RunConfig:
    d = dict(d)
    d["model"] = ModelRef(**d["model"])
    d["train"] = train_config_from_dict(d["train"])
    return RunConfig(**d)


# --- `--set key=value` ------------------------------------------------------------------------------------

_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM%]?)\s*$")


def parse_budget(spec: str, base_params: int | None = None) -> int:
    """'0.3M', '150K', '20000', '0.5%' (of the base model's parameters) -> a parameter count."""
    m = _BUDGET_RE.match(spec)
    if not m:
        raise UsageError(f"malformed budget {spec!r}: use a count like 150K, 0.3M, 20000 or a percentage like 0.5%")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if base_params is None:
            raise UsageError(f"budget {spec!r} is a percentage; it needs the base model's parameter count")
        count = value / 100.0 * base_params
    else:
        count = value * {"": 1, "k": 1e3, "m": 1e6}[unit]
    if count < 1:
        raise UsageError(f"budget {spec!r} is below one parameter; use a positive count like 0.3M")
    return int(round(count))


def parse_value(raw: str) -> Any:
    """Literals only (never eval): numbers, booleans, None, strings, lists/tuples of those."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if "," in raw:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return raw


def _coerce(name: str, value: Any, annotation: Any, owner: str) -> Any:
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(name, value, opt, owner)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{owner} {name}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = tuple(p.strip() for p in value.split(",") if p.strip())
        if not isinstance(value, (list, tuple)):
            value = (value,)
        return tuple(str(v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{owner} {name} expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UsageError(f"{owner} {name} expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{owner} {name} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(cls: type, base: Any, overrides: dict[str, Any], owner: str) -> Any:
    hints = field_types(cls)
    changes = {}
    for key, value in overrides.items():
        if key not in hints:
            raise UsageError(unknown_name_message(f"{owner} setting", key, sorted(hints)))
        changes[key] = _coerce(key, value, hints[key], f"{owner} setting")
    return dataclasses.replace(base, **changes)


def split_overrides(sets: list[str], method_cls: type, method_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` items into (method config changes, train config changes). `method.x=`/`train.x=` force a side;
    `METHOD.x=` (a registered method's name) applies only to that method and is skipped for the others, so one
    sweep can set a knob only some of its methods have; a bare key goes to whichever config has it (the
    method's first)."""
    method_fields = set(field_types(method_cls))
    train_fields = set(field_types(TrainConfig))
    m_over: dict[str, Any] = {}
    t_over: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        scope, dot, rest = key.partition(".")
        if dot and scope not in ("method", "train"):
            if scope != method_name:
                check_method_scope(scope, item)
                continue
            key = rest
        value = parse_value(raw.strip())
        if key.startswith("method."):
            m_over[key[7:]] = value
        elif key.startswith("train."):
            t_over[key[6:]] = value
        elif key in method_fields:
            m_over[key] = value
        elif key in train_fields:
            t_over[key] = value
        else:
            valid = sorted(method_fields | train_fields)
            raise UsageError(unknown_name_message(f"setting for {method_name}", key, valid))
    return m_over, t_over


def scoped_method(item: str) -> str | None:
    """The method a `--set METHOD.key=value` is scoped to, None for an unscoped (or method./train.) item."""
    scope, dot, _ = item.split("=", 1)[0].strip().partition(".")
    return scope if dot and scope not in ("method", "train") else None


def check_method_scope(scope: str, item: str) -> None:
    """A `METHOD.` prefix must name a registered method: a typo would otherwise drop the setting silently."""
    from peftbench import registry

    if scope not in registry.adapters.names():
        raise UsageError(
            f"--set {item}: {unknown_name_message('method', scope, sorted(registry.adapters.names()))} "
            f"(prefix a setting with a method's name to apply it to that method only)"
        )
