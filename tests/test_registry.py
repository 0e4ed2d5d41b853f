"""Registry: entry points are the one source of truth; a plugin distribution adds a method without core changes."""

from __future__ import annotations

import sys
import textwrap

import pytest

from peftbench import registry
from peftbench.errors import UsageError
from tests.helpers import quick_run

PLUGIN = '''
"""BitFit (Ben Zaken et al., 2022): only the biases of the target layers train. A plugin, not a built-in."""
from dataclasses import dataclass

from peftbench.adapters.base import Adapter, find_targets, freeze_all_but_head


@dataclass(frozen=True)
class BitFitConfig:
    pass


class BitFitAdapter(Adapter):
    name = "bitfit_plugin"
    config_cls = BitFitConfig
    default_lr = 1e-3

    def apply(self, model, plan):
        freeze_all_but_head(model, plan.head_modules)
        for t in find_targets(model, plan.targets, plan.head_modules):
            model.get_submodule(t.name).bias.requires_grad_(True)
        return model

    @classmethod
    def adapter_count(cls, targets, config):
        return sum(t.d_out for t in targets)
'''


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """A fake installed distribution: a module plus a .dist-info with an entry_points.txt, on sys.path."""
    (tmp_path / "bitfit_plugin_mod.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "bitfit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitfit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peftbench.adapters]\nbitfit_plugin = bitfit_plugin_mod:BitFitAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.adapters.clear_cache()
    yield
    registry.adapters.clear_cache()
    sys.modules.pop("bitfit_plugin_mod", None)


def test_builtins_come_from_entry_points():
    assert {"full", "lora", "dora", "adalora"} <= set(registry.adapters.names())
    assert {"sst2", "mnli", "stsb", "squad", "squad_v2"} <= set(registry.tasks.names())


def test_unknown_names_list_close_matches():
    with pytest.raises(UsageError) as e:
        registry.adapters.get("lorra")
    msg = str(e.value)
    assert "did you mean lora" in msg and "valid methods:" in msg and "\n" not in msg
    with pytest.raises(UsageError, match="did you mean sst2"):
        registry.tasks.get("sst-2")


def test_duplicate_registration_raises():
    with pytest.raises(UsageError, match="duplicate"):
        registry.adapters.register("lora", object())


def test_plugin_method_runs_through_the_runner(plugin_distribution, tiny_model_dir, tmp_path):
    assert "bitfit_plugin" in registry.adapters.names()
    rec = quick_run(tiny_model_dir, tmp_path, task="sst2", method="bitfit_plugin")
    assert rec.ok, rec.error
    # 2 layers x (q, k, v, attn-out: 32; ffn-in: 37; ffn-out: 32) biases
    assert rec.params.adapter == 2 * (4 * 32 + 37 + 32)


def test_broken_plugin_is_a_one_line_error(tmp_path, monkeypatch):
    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peftbench.adapters]\nbroken = no_such_module_xyz:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.adapters.clear_cache()
    with pytest.raises(UsageError, match="could not be loaded"):
        registry.adapters.get("broken")
