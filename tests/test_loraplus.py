"""LoRA+ (`lr_ratio`): the optimizer's parameter groups are those of peft 0.21's `create_loraplus_optimizer` (same
parameters, learning rates and weight decay), and the runner builds its optimizer from the adapter's groups."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

from peftbench import registry
from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.dora import DoraAdapter, DoraConfig
from peftbench.adapters.lora import LoraAdapter, LoraConfig
from peftbench.config import DEFAULT_TARGETS
from tests.helpers import quick_run
from tests.test_lora import PEFT_TARGETS
from tests.test_vera import _base_model

LR, RATIO, DECAY = 1e-3, 16.0, 0.01


def _our_name(peft_name: str) -> str:
    """peft's parameter name for the same tensor in ours: adapter name and wrappers dropped, DoRA's m renamed."""
    name = peft_name.removeprefix("base_model.model.")
    for theirs, mine in ((".lora_A.default.weight", ".lora_A"), (".lora_B.default.weight", ".lora_B"),
                         (".lora_magnitude_vector.default.weight", ".magnitude"),
                         (".modules_to_save.default.", ".")):  # fmt: skip
        name = name.replace(theirs, mine)
    return name


def _grouping(groups, names: dict[int, str]) -> dict[tuple[float, float], set[str]]:
    out: dict[tuple[float, float], set[str]] = {}
    for g in groups:
        if g["params"]:
            key = (round(g["lr"], 12), g["weight_decay"])
            out.setdefault(key, set()).update(names[id(p)] for p in g["params"])
    return out


@pytest.mark.parametrize("dora", [False, True])
def test_groups_are_peft_s(dora):
    base = _base_model()
    adapter = DoraAdapter(DoraConfig(lr_ratio=RATIO)) if dora else LoraAdapter(LoraConfig(lr_ratio=RATIO))
    mine = adapter.apply(copy.deepcopy(base), ApplyPlan(10, DEFAULT_TARGETS))
    cfg = peft.LoraConfig(r=8, lora_alpha=16, use_dora=dora, target_modules=PEFT_TARGETS, task_type="SEQ_CLS")
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                    loraplus_weight_decay=DECAY)  # fmt: skip

    ours = _grouping(adapter.param_groups(mine, LR, DECAY), {id(p): n for n, p in mine.named_parameters()})
    peft_names = {id(p): _our_name(n) for n, p in theirs.named_parameters()}
    assert ours == _grouping(opt.param_groups, peft_names)
    # What the grouping means: B and 1-d parameters fast, A and the head's matrix at lr, biases undecayed.
    fast = ours[(round(LR * RATIO, 12), DECAY)]
    assert all(n.endswith((".lora_B", ".magnitude")) for n in fast)
    assert ours[(round(LR * RATIO, 12), 0.0)] == {"classifier.bias"}
    assert ours[(LR, DECAY)] == {n for n, p in mine.named_parameters() if p.requires_grad and p.dim() == 2} - fast
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in mine.parameters())


def test_ratio_one_is_plain_lora_s_single_group():
    adapter = LoraAdapter(LoraConfig())
    model = adapter.apply(_base_model(), ApplyPlan(10, DEFAULT_TARGETS))
    [group] = adapter.param_groups(model, LR, DECAY)
    assert group["lr"] == LR and group["weight_decay"] == DECAY
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters() if p.requires_grad]


class _Spy(LoraAdapter):
    name = "spy"
    calls: list = []

    def param_groups(self, model, lr, weight_decay):
        groups = super().param_groups(model, lr, weight_decay)
        type(self).calls.append((lr, weight_decay, [(g["lr"], len(g["params"])) for g in groups]))
        return groups


def test_the_runner_builds_its_optimizer_from_the_adapter_s_groups(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.adapters._extra, "spy", _Spy)
    _Spy.calls = []
    rec = quick_run(tiny_model_dir, tmp_path, method="spy", sets=("lr_ratio=16", "lr=2e-3", "weight_decay=0.01"))
    assert rec.ok, rec.error
    [(lr, decay, groups)] = _Spy.calls
    assert (lr, decay) == (2e-3, 0.01)
    assert [g[0] for g in groups] == [2e-3, pytest.approx(2e-3 * 16), pytest.approx(2e-3 * 16)]
