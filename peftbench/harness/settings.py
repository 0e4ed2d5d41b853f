"""`peftbench list --settings METHOD`: every `--set` key a run of METHOD takes, with its type, its default and the
help its config dataclass declares, so the dataclasses stay the one place a setting is described."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from peftbench.config import PROFILES, TrainConfig, field_types


@dataclass(frozen=True)
class Setting:
    name: str
    type: str
    default: str
    help: str


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        return "list of " + _type_name(args[0]) if args else "list"
    if args:  # a union (int | float, int | None)
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    """A default as it would be typed after --set."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_of(config_cls: type) -> list[Setting]:
    hints = field_types(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        out.append(Setting(f.name, _type_name(hints[f.name]), _shown(default), str(f.metadata.get("help", ""))))
    return out


def _table(settings: list[Setting], width: int) -> list[str]:
    if not settings:
        return ["  (none)"]
    w_name = max(len(s.name) for s in settings)
    w_type = max(len(s.type) for s in settings)
    w_default = min(max(len(s.default) for s in settings), 24)
    indent = 2 + w_name + 2 + w_type + 2 + w_default + 2
    lines = []
    for s in settings:
        head = f"  {s.name:<{w_name}}  {s.type:<{w_type}}  {s.default:<{w_default}}  "
        if len(head) > indent:  # a long default: the help starts on the next line
            lines.append(head.rstrip())
            head = " " * indent
        wrapped = textwrap.wrap(s.help, max(30, width - indent)) or [""]
        lines.append(head + wrapped[0])
        lines += [" " * indent + w for w in wrapped[1:]]
    return lines


def settings_text(method: str, width: int | None = None) -> str:
    from peftbench import registry

    adapter_cls = registry.adapters.get(method)  # an unknown name is a UsageError with the valid ones
    width = width or shutil.get_terminal_size((120, 20)).columns
    lines = [
        f"{method} settings (--set KEY=VALUE; in a sweep of several methods --set {method}.KEY=VALUE):",
        *_table(settings_of(adapter_cls.config_cls), width),
        "",
        "train settings (--set KEY=VALUE, or train.KEY=VALUE where the method has a setting of the same name):",
        *_table(settings_of(TrainConfig), width),
        "",
        *textwrap.wrap(
            f"Defaults are the dataclasses'; lr 0 means {method}'s own ({adapter_cls.default_lr:g}), max_length 0 "
            "the task's. Each profile (--profile) starts from them and changes:",
            width,
        ),
    ]
    for name, changes in PROFILES.items():
        lines.append(f"  {name}: " + (" ".join(f"{k}={_shown(v)}" for k, v in changes.items()) or "nothing"))
    if adapter_cls.budget_knobs:
        lines.append(f"With --budget, the budget sets {', '.join(adapter_cls.budget_knobs)}: do not --set them too.")
    return "\n".join(lines)
