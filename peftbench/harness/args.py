"""Argument types and options that several subcommands share, so they parse the same way everywhere."""

from __future__ import annotations

import argparse


def names(value: str) -> tuple[str, ...]:
    """`a, b,,c` -> ("a", "b", "c"): comma-separated names, blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in names(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers like 0,1,2, got {value!r}") from None


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `--set KEY=VALUE` (parsed and type-checked later, by config.split_overrides)."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help)


class DefaultsFormatter(argparse.HelpFormatter):
    """--help with each option's default, where it has one worth showing (not for flags, empty lists or None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or isinstance(default, bool)
            or default == argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or not action.option_strings
        ):
            return text
        if isinstance(default, (list, tuple)):  # as it is typed: comma-separated
            shown = ",".join(map(str, default)).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"
