"""What the command line says about itself: its version, every setting of a method with type, default and help
(from the config dataclasses), and the defaults in --help."""

from __future__ import annotations

import dataclasses
import re

import pytest

import peftbench
from peftbench import registry
from peftbench.config import TrainConfig
from peftbench.harness.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"peftbench {peftbench.__version__}"


def _settings_rows(out: str) -> dict[str, str]:
    """name -> its first line, for the rows of `list --settings` (two-space indented, name first)."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^  (\w+)  .*$", out, re.M)}


@pytest.mark.parametrize("method", registry.adapters.names())
def test_list_settings_shows_every_field_with_type_default_and_help(method, capsys):
    assert main(["list", "--settings", method]) == 0
    out = capsys.readouterr().out
    rows = _settings_rows(out)
    config_cls = registry.adapters.get(method).config_cls
    for cls in (config_cls, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f.name in rows, f"{method}: {f.name} missing from\n{out}"
            help_text = f.metadata.get("help", "")
            # The help's first words (it may wrap onto the next lines).
            assert " ".join(help_text.split()[:3]) in " ".join(out.split()), f.name


def test_list_settings_values(capsys):
    assert main(["list", "--settings", "lora"]) == 0
    out = capsys.readouterr().out
    rows = _settings_rows(out)
    assert re.search(r"\br\s+int\s+8\s+rank of the update B A", rows["r"])
    assert re.search(r"\brslora\s+bool\s+false\s", rows["rslora"])
    assert re.search(r"\blr\s+float\s+0\.0\s+peak learning rate", rows["lr"])
    assert "query,key,value" in rows["targets"] and "list of str" in rows["targets"]
    assert "quick: epochs=1.0 train_rows=4000" in out
    assert "the budget sets r" in out


def test_list_settings_of_an_unknown_method_is_a_one_line_error(capsys):
    assert main(["list", "--settings", "lorra"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown method 'lorra'; did you mean lora") and "\n" not in err


def _help(*argv: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join((sub.choices[argv[0]] if argv else parser).format_help().split())


def test_help_shows_the_defaults():
    run = _help("run")
    for text in ("(default: minilm-l6)", "(default: sample)", "(default: quick)", "(default: results)",
                 "(default: auto)", "random seed (data order, initialisation) (default: 0)"):  # fmt: skip
        assert text in run, text
    sweep = _help("sweep")
    assert "comma-separated seeds (default: 0)" in sweep and "(default: 1)" in sweep and "(default: local)" in sweep
    # Flags and options without a default say nothing about one.
    assert "no progress bars (default" not in sweep and "(default: None)" not in sweep
    assert "(default: [])" not in sweep and "(default: ())" not in sweep
    # Subcommands contributed by other modules get the same treatment.
    assert "(default: results)" in _help("leaderboard")
