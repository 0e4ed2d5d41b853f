"""The declared dependency floors are the versions the code needs (transformers 5, datasets 4)."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


def test_floors_exclude_versions_the_code_cannot_run_on():
    declared = _declared()
    # transformers 4.x reads TrainingArguments(warmup_steps=0.06) as 0 warm-up steps, not a ratio (perf e2e).
    assert Version("4.57.0") not in declared["transformers"].specifier
    assert Version("5.0.0") in declared["transformers"].specifier
    # datasets.List, used by the SQuAD features, arrived in datasets 4.
    assert Version("3.6.0") not in declared["datasets"].specifier
    assert Version("4.0.0") in declared["datasets"].specifier


def test_installed_versions_meet_the_floors():
    from importlib import metadata

    for name, req in _declared().items():
        if name in ("transformers", "datasets"):
            assert Version(metadata.version(name)) in req.specifier, (name, metadata.version(name))
