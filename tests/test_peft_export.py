"""Adapters that travel: LoRA, DoRA and AdaLoRA written in peft's format (without peft) and read back with
`PeftModel.from_pretrained` onto the same base model give the run's logits, in float32 to 1e-5; the keys are
those peft itself saves for the same modules."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from peftbench.adapters.adalora import AdaLoraAdapter, AdaLoraConfig
from peftbench.adapters.base import ApplyPlan
from peftbench.adapters.dora import DoraAdapter, DoraConfig
from peftbench.adapters.lora import LoraAdapter, LoraConfig
from peftbench.adapters.peft_format import exact_names
from peftbench.config import DEFAULT_TARGETS, ModelRef, RunConfig, TrainConfig
from peftbench.errors import UsageError
from peftbench.harness.run.export import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, save_peft
from tests.conftest import tiny_bert_config
from tests.test_vera import _inputs

STEPS = 12
PLAN = ApplyPlan(total_steps=STEPS, targets=DEFAULT_TARGETS)
CFG = RunConfig("sst2", "lora", 0, ModelRef("m", "m", "org/tiny", "main"), "sample", "d", {}, TrainConfig())

CASES = {
    "lora": lambda: LoraAdapter(LoraConfig(r=4, alpha=8.0, dropout=0.1)),
    "lora-rslora": lambda: LoraAdapter(LoraConfig(r=4, alpha=8.0, rslora=True)),
    "lora-pissa": lambda: LoraAdapter(LoraConfig(r=4, alpha=8.0, init="pissa")),
    "lora-pissa-rslora": lambda: LoraAdapter(LoraConfig(r=3, alpha=8.0, init="pissa", rslora=True)),
    "dora": lambda: DoraAdapter(DoraConfig(r=4, alpha=8.0)),
    "dora-pissa": lambda: DoraAdapter(DoraConfig(r=4, alpha=8.0, init="pissa")),
    "adalora": lambda: AdaLoraAdapter(AdaLoraConfig(init_r=6, target_r=3, t_init=2, t_final=4, delta_t=2)),
    # A parameter budget and init ranks capped by a matrix's size (32 x 37 matrices, init_r 33 -> 32).
    "adalora-budget": lambda: AdaLoraAdapter(
        AdaLoraConfig(init_r=33, target_budget=3000, init_budget_ratio=8.0, t_init=2, t_final=4, delta_t=2)
    ),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny BERT classifier saved with save_pretrained; biases non-zero so a dropped bias would show."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0.0, 0.1)
    d = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(d)
    return d


def _load_base(base_dir, seed: int):
    torch.manual_seed(seed)  # the head is the checkpoint's; a different seed shows it is the adapter's that counts
    return BertForSequenceClassification.from_pretrained(base_dir)


def _train(adapter, model, steps: int = STEPS) -> None:
    """A few real optimizer steps with the adapter's hooks (AdaLoRA prunes and fixes its ranks in them)."""
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.AdamW(adapter.param_groups(model, 5e-2, 0.0))
    model.train()
    for step in range(steps):
        ids = torch.randint(5, 900, (4, 9), generator=g)
        out = model(input_ids=ids, labels=torch.randint(0, 3, (4,), generator=g))
        extra = adapter.extra_loss(model)
        (out.loss if extra is None else out.loss + extra).backward()
        opt.step()
        adapter.on_step_end(model, step)
        opt.zero_grad(set_to_none=True)
    model.eval()


def _trained(case: str, base_dir):
    adapter = CASES[case]()
    model = adapter.apply(_load_base(base_dir, seed=1), PLAN)
    _train(adapter, model)
    return adapter, model


def _reloaded(directory, base_dir):
    return peft.PeftModel.from_pretrained(_load_base(base_dir, seed=2), directory).eval()


@pytest.mark.parametrize("case", sorted(CASES))
# peft warns on reading its own AdaLoRA files that their rank_pattern keys (`<module>.lora_E`) match no module.
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")
def test_peft_reloads_the_run_s_logits(case, base_dir, tmp_path):
    adapter, model = _trained(case, base_dir)
    target = save_peft(adapter.peft_export(model), tmp_path / "adapter", CFG)
    assert sorted(p.name for p in target.iterdir()) == [PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME]
    x = _inputs()
    with torch.no_grad():
        ours = model(**x).logits
        theirs = _reloaded(target, base_dir)(**x).logits
        fresh = _load_base(base_dir, seed=2)(**x).logits
    assert (ours - theirs).abs().max() <= 1e-5, (ours - theirs).abs().max()
    assert (ours - fresh).abs().max() > 1e-2  # the comparison means something: the adapter and head moved it
    config = json.loads((target / PEFT_CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == "org/tiny" and config["task_type"] == "SEQ_CLS"


def _peft_twin(case: str, adapter, model):
    """peft's own model for the same modules, to compare key names with what peft's save writes."""
    targets = exact_names([n for n, m in model.named_modules() if hasattr(m, "merged")])
    base = BertForSequenceClassification(tiny_bert_config(num_labels=3))
    if case.startswith("adalora"):
        cfg = peft.AdaLoraConfig(init_r=6, total_step=STEPS, tinit=2, tfinal=4, target_modules=targets,
                                 task_type="SEQ_CLS")  # fmt: skip
    else:
        cfg = peft.LoraConfig(r=4, use_dora=case.startswith("dora"), target_modules=targets, task_type="SEQ_CLS")
    return peft.get_peft_model(base, cfg)


@pytest.mark.parametrize("case", ["lora", "dora", "adalora"])
def test_keys_are_the_ones_peft_saves(case, base_dir):
    adapter, model = _trained(case, base_dir)
    export = adapter.peft_export(model)
    twin = _peft_twin(case, adapter, model)
    assert set(export.tensors) == set(get_peft_model_state_dict(twin))
    assert (
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A" + ("" if case == "adalora" else ".weight")
        in export.tensors
    )
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(export.tensors)
    assert export.config["modules_to_save"] == ["classifier"]
    if case == "dora":
        assert "base_model.model.bert.encoder.layer.1.output.dense.lora_magnitude_vector" in export.tensors
        assert export.config["use_dora"] is True


@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")
def test_adalora_writes_its_rank_pattern_and_resized_tensors(base_dir, tmp_path):
    adapter, model = _trained("adalora", base_dir)
    # One matrix pruned to nothing: peft takes rank 0 too, and the file holds empty tensors for it.
    name = "bert.encoder.layer.1.intermediate.dense"
    with torch.no_grad():
        layer = model.get_submodule(name)
        layer.kept.fill_(False)
        layer.apply_mask()
    export = adapter.peft_export(model)
    pattern = export.config["rank_pattern"]
    assert set(pattern) == {f"{n}.lora_E" for n in adapter.layers}
    for n, layer in adapter.layers.items():
        kept = sum(pattern[f"{n}.lora_E"])
        assert kept == layer.rank and len(pattern[f"{n}.lora_E"]) == export.config["init_r"] == 6
        assert export.tensors[f"base_model.model.{n}.lora_E"].shape == (kept, 1)
        assert export.tensors[f"base_model.model.{n}.lora_A"].shape == (kept, layer.base.in_features)
        assert export.tensors[f"base_model.model.{n}.lora_B"].shape == (layer.base.out_features, kept)
    assert sum(pattern[f"{name}.lora_E"]) == 0
    assert sum(layer.rank for layer in adapter.layers.values()) < 6 * len(adapter.layers)
    target = save_peft(export, tmp_path / "adapter", CFG)
    assert load_file(str(target / PEFT_WEIGHTS_NAME))[f"base_model.model.{name}.lora_A"].numel() == 0
    x = _inputs()
    with torch.no_grad():
        assert (model(**x).logits - _reloaded(target, base_dir)(**x).logits).abs().max() <= 1e-5


def test_pissa_is_written_relative_to_the_original_weight(base_dir):
    adapter, model = _trained("lora-pissa", base_dir)
    export = adapter.peft_export(model)
    assert export.config["r"] == 8 and export.config["lora_alpha"] == 16.0  # rank 2r, the same scaling
    assert export.config["init_lora_weights"] is True  # plain LoRA on the original W, as peft converts it


def test_export_refuses_a_merged_adapter_and_writes_atomically(base_dir, tmp_path):
    adapter, model = _trained("dora", base_dir)
    target = save_peft(adapter.peft_export(model), tmp_path / "adapter", CFG)
    first = load_file(str(target / PEFT_WEIGHTS_NAME))
    save_peft(adapter.peft_export(copy.deepcopy(model)), target, CFG)  # over an existing directory
    again = load_file(str(target / PEFT_WEIGHTS_NAME))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary directory left behind
    adapter.merge(model)
    with pytest.raises(UsageError, match="merged into its base weight"):
        adapter.peft_export(model)


def test_adapters_import_no_peft():
    import subprocess
    import sys

    code = "import sys, peftbench.adapters.adalora, peftbench.adapters.dora, peftbench.harness.run.export; "
    code += "sys.exit('peft' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- through the command line ------------------------------------------------------------------------------

SETS = ("train_rows=16", "eval_rows=8", "batch_size=8", "max_length=32", "eval_batch_size=16", "max_steps=3")


def _argv(*sets: str) -> list[str]:
    return [a for s in (*SETS, "precision=fp32", *sets) for a in ("--set", s)]


@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")
@pytest.mark.parametrize("method, sets", [("dora", ("init=pissa",)), ("adalora", ())])
def test_run_save_adapter_writes_what_peft_reloads(method, sets, tiny_model_dir, tmp_path, capsys):
    import contextlib

    from transformers import AutoTokenizer

    from peftbench import registry
    from peftbench.harness.cli import main
    from peftbench.harness.run.data import load_rows
    from peftbench.harness.run.train import evaluate
    from peftbench.records import load_record

    argv = ["run", "--task", "stsb", "--method", method, "--model", str(tiny_model_dir), "--results", str(tmp_path)]
    assert main([*argv, "--quiet", "--save-adapter", *_argv(*sets)]) == 0
    [path] = (tmp_path / "runs" / "stsb" / method).glob("*.json")
    target = path.with_suffix(".adapter")
    assert f"weights {target.name}" in capsys.readouterr().out
    rec = load_record(path).record
    assert rec.adapter_file == target.name
    assert sorted(p.name for p in target.iterdir()) == [PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME]

    # The run's own predictions (regression scores: floats) from peft's model on the untouched base model.
    task, cfg = registry.tasks.get("stsb"), rec.config
    torch.manual_seed(123)
    base = task.model_class().from_pretrained(str(tiny_model_dir), **task.model_kwargs())
    model = peft.PeftModel.from_pretrained(base, target).eval()
    rows = load_rows(task, "sample", "validation", cfg.train.eval_rows)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    feats = task.featurize(rows, tok, cfg.train.max_length, False)
    sets_ = {"validation": (feats, rows, "")}
    _, scored = evaluate(task, model, sets_, cfg.train, tok.pad_token_id, torch.device("cpu"), contextlib.nullcontext)
    recorded = json.loads(path.with_suffix(".preds.jsonl").read_text().splitlines()[0])["predictions"]
    assert scored["validation"].predictions == pytest.approx(recorded, abs=1e-5)


def test_sweep_save_adapter_reaches_every_executor(tiny_model_dir, tmp_path):
    from peftbench.harness.cli import main
    from peftbench.harness.sweep.executors import run_command

    assert run_command("c.json", "r", True, save_adapter=True)[-2:] == ["--quiet", "--save-adapter"]
    assert "--save-adapter" not in run_command("c.json", "r", False)
    argv = ["sweep", "--tasks", "sst2", "--methods", "lora,bitfit", "--executor", "inline", "--save-adapter",
            "--no-leaderboard", "--quiet", "--model", str(tiny_model_dir), "--results", str(tmp_path)]  # fmt: skip
    assert main([*argv, *_argv()]) == 0
    runs = tmp_path / "runs" / "sst2"
    [lora] = (runs / "lora").glob("*.adapter")
    assert (lora / PEFT_CONFIG_NAME).is_file() and (lora / PEFT_WEIGHTS_NAME).is_file()
    assert len(list((runs / "bitfit").glob("*.adapter.safetensors"))) == 1  # BitFit keeps peftbench's layout
