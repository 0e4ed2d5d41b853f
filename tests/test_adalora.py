"""AdaLoRA against peft 0.21's tuners/adalora: forward, allocation, regulariser; then our own budget modes."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import peft
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from peftbench.adapters.adalora import AdaLoraAdapter, AdaLoraConfig, AdaLoraLinear, orth_penalty
from peftbench.adapters.adalora.config import resolve_schedule
from peftbench.adapters.base import ApplyPlan, find_targets, fmt_count
from peftbench.errors import BudgetError, UsageError

# Mixed shapes: 32x32 attention matrices, 37x32 intermediate and 32x37 output.
TARGETS = ("query", "value", "intermediate.dense", "output.dense")


def tiny_bert(seed: int = 0, dtype: torch.dtype = torch.float32) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).to(dtype)


def ours(model, total_steps: int, **kw) -> AdaLoraAdapter:
    adapter = AdaLoraAdapter(AdaLoraConfig(**kw))
    adapter.apply(model, ApplyPlan(total_steps=total_steps, targets=TARGETS))
    return adapter


def with_peft(model, total_steps: int, init_r=4, target_r=2, alpha=32.0, dropout=0.0, t_init=3, t_final=5,
              delta_t=2, orth_reg_weight=0.1):  # fmt: skip
    cfg = peft.AdaLoraConfig(
        init_r=init_r, target_r=target_r, lora_alpha=alpha, lora_dropout=dropout, tinit=t_init, tfinal=t_final,
        deltaT=delta_t, total_step=total_steps, orth_reg_weight=orth_reg_weight, target_modules=list(TARGETS),
    )  # fmt: skip
    return peft.get_peft_model(model, cfg)


def triplet_pairs(pm, adapter):
    """(name, [(peft param, our param)]) for P<->lora_B, lambda<->lora_E, Q<->lora_A."""
    for name, layer in adapter.layers.items():
        pl = pm.base_model.model.get_submodule(name)
        yield (
            name,
            [(pl.lora_B["default"], layer.P), (pl.lora_E["default"], layer.lam), (pl.lora_A["default"], layer.Q)],
        )


@torch.no_grad()
def copy_from_peft(pm, adapter, scale_pq: float = 1.0) -> None:
    """Same P, Q in both (optionally scaled up so the update is visible) and a non-zero lambda."""
    gen = torch.Generator().manual_seed(1)
    for _, pairs in triplet_pairs(pm, adapter):
        (pp, _), (pe, _), (pa, _) = pairs
        pp.mul_(scale_pq)
        pa.mul_(scale_pq)
        pe.copy_(torch.randn(pe.shape, generator=gen))
        for theirs, mine in pairs:
            mine.copy_(theirs.view_as(mine))


def batch(seed: int = 0, n: int = 4, length: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (n, length), generator=gen), torch.randint(0, 2, (n,), generator=gen)


def drive(model, adapter: AdaLoraAdapter, steps: range, seed: int = 0) -> None:
    """Fake optimizer steps: random gradients, a plain SGD move, then the hook, as a runner would."""
    gen = torch.Generator().manual_seed(seed)
    for step in steps:
        for layer in adapter.layers.values():
            for p in (layer.P, layer.lam, layer.Q):
                g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                with torch.no_grad():
                    p.sub_(0.05 * g)
                p.grad = g
        adapter.on_step_end(model, step)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_matches_peft(mode):
    base = tiny_bert()
    # Dropout 0.1 in eval checks it is switched off there; train compares with dropout 0 (no RNG to share).
    dropout = 0.0 if mode == "train" else 0.1
    pm = with_peft(copy.deepcopy(base), 30, dropout=dropout)
    model = copy.deepcopy(base)
    adapter = ours(model, 30, init_r=4, target_r=2, dropout=dropout, t_init=3, t_final=5, delta_t=2)
    copy_from_peft(pm, adapter, scale_pq=10.0)
    getattr(pm, mode)()
    getattr(model, mode)()
    ids, _ = batch()
    with torch.no_grad():
        theirs = pm.base_model.model(input_ids=ids, output_hidden_states=True)
        mine = model(input_ids=ids, output_hidden_states=True)
        bare = base(input_ids=ids, output_hidden_states=True)
    assert torch.allclose(mine.hidden_states[-1], theirs.hidden_states[-1], atol=1e-5, rtol=0)
    assert torch.allclose(mine.logits, theirs.logits, atol=1e-5, rtol=0)
    # The comparison means something only if the update changed the output.
    assert (mine.hidden_states[-1] - bare.hidden_states[-1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "schedule",
    [dict(t_init=3, t_final=5, delta_t=2), dict(t_init=0, t_final=1, delta_t=3), dict(t_init=6, t_final=10, delta_t=1)],
)
def test_allocation_matches_peft_step_by_step(schedule):
    """Same values and gradients every step: the budget, when allocation happens, the masks, lambda and the
    importance EMAs are identical to peft's update_and_allocate(global_step) with global_step = our `step`."""
    T = 30
    base = tiny_bert()
    pm = with_peft(copy.deepcopy(base), T, **schedule)
    model = copy.deepcopy(base)
    adapter = ours(model, T, init_r=4, target_r=2, **schedule)
    copy_from_peft(pm, adapter)
    lora_cfg = pm.peft_config["default"]
    gen = torch.Generator().manual_seed(2)
    allocations = 0
    for step in range(T):
        for _, pairs in triplet_pairs(pm, adapter):
            for theirs, mine in pairs:
                g = torch.randn(theirs.shape, generator=gen)
                with torch.no_grad():
                    theirs.sub_(0.01 * g)
                    mine.copy_(theirs.view_as(mine))
                theirs.grad, mine.grad = g.clone(), g.view_as(mine).clone()
        pattern_before = lora_cfg.rank_pattern
        pm.base_model.update_and_allocate(step)
        adapter.on_step_end(model, step)

        assert adapter.allocator.last_budget == pm.base_model.rankallocator.budget_schedule(step)[0], step
        peft_allocated = lora_cfg.rank_pattern is not pattern_before
        assert adapter.allocator.last_allocated == peft_allocated, step
        allocations += peft_allocated
        for name, pairs in triplet_pairs(pm, adapter):
            if peft_allocated:
                assert lora_cfg.rank_pattern[f"{name}.lora_E.default"] == adapter.layers[name].kept.tolist(), step
            (_, _), (pe, lam), (_, _) = pairs
            assert torch.equal(pe.view(-1), lam), (step, name)
            if step < T - schedule["t_final"]:
                ipt = pm.base_model.rankallocator
                for key, peft_key in (("P", "lora_B"), ("lam", "lora_E"), ("Q", "lora_A")):
                    e, u = adapter.allocator.importance(name, key)
                    assert torch.equal(e.view(-1), ipt.exp_avg_ipt[f"{name}.{peft_key}.default"].view(-1))
                    assert torch.equal(u.view(-1), ipt.exp_avg_unc[f"{name}.{peft_key}.default"].view(-1))
    assert allocations >= 2
    assert adapter.allocator.finalised
    assert adapter.allocator.retained_triplets == 2 * len(adapter.layers) == pm.base_model.rankallocator.target_bgt


@pytest.mark.parametrize("squared", [False, True])
def test_orth_regulariser_matches_peft(squared):
    base = tiny_bert()
    pm = with_peft(copy.deepcopy(base), 30, orth_reg_weight=0.1)
    model = copy.deepcopy(base)
    adapter = ours(model, 30, init_r=4, target_r=2, t_init=3, t_final=5, delta_t=2, orth_squared=squared)
    copy_from_peft(pm, adapter, scale_pq=20.0)
    ids, labels = batch()
    with torch.no_grad():
        with_reg = pm.base_model(input_ids=ids, labels=labels).loss  # AdaLoraModel.forward adds gamma * R
        without = pm.base_model.model(input_ids=ids, labels=labels).loss
        mine_task = model(input_ids=ids, labels=labels).loss
    mine = adapter.extra_loss(model)
    assert mine.requires_grad
    # Our forward never adds the regulariser: the task loss equals peft's loss without it.
    assert torch.allclose(mine_task, without, atol=1e-6)
    # peft's formula, recomputed on its own matrices.
    norms = []
    for n, p in pm.base_model.model.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            gram = p @ p.T if "lora_A" in n else p.T @ p
            norms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0]), ord="fro"))
    norms = torch.stack(norms)
    assert len(norms) == 2 * len(adapter.layers)
    if squared:
        assert torch.allclose(mine.detach(), 0.1 * (norms**2).mean(), rtol=1e-5)
    else:
        assert torch.allclose(mine.detach(), with_reg - without, rtol=1e-4)
        assert torch.allclose(mine.detach(), 0.1 * norms.mean(), rtol=1e-5)
    mine.backward()
    assert all(layer.P.grad is not None and layer.P.grad.abs().sum() > 0 for layer in adapter.layers.values())


def test_pruned_ranks_contribute_exactly_zero_and_counts():
    model = tiny_bert()
    adapter = ours(model, 20, init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2)
    drive(model, adapter, range(20))
    assert adapter.allocator.finalised
    x = torch.randn(3, 37)
    for name, layer in adapter.layers.items():
        assert torch.all(layer.lam[~layer.kept] == 0), name
        x_in = x[:, : layer.base.in_features]
        before_out, before_delta = layer(x_in), layer.delta_weight()
        with torch.no_grad():
            layer.P[:, ~layer.kept] = 1e3 * torch.randn(layer.P.shape[0], int((~layer.kept).sum()))
            layer.Q[~layer.kept] = 1e3 * torch.randn(int((~layer.kept).sum()), layer.Q.shape[1])
        assert torch.equal(layer(x_in), before_out), name
        assert torch.equal(layer.delta_weight(), before_delta), name
    report = adapter.param_report(model)
    layers = adapter.layers.values()
    assert report.adapter == sum(int(m.kept.sum()) * m.triplet_cost for m in layers)
    assert report.adapter_peak == sum(4 * (m.base.in_features + m.base.out_features + 1) for m in layers)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert report.head == head and report.trainable == report.adapter_peak + head
    diag = adapter.diagnostics()
    assert sum(diag["final_ranks"].values()) == diag["final_triplets"] == 2 * len(adapter.layers)
    grid = diag["rank_grid"]
    assert grid["layers"] == [0, 1] and len(grid["kinds"]) == 5
    assert sum(r for row in grid["ranks"] for r in row) == diag["final_triplets"]


def test_merged_equals_unmerged():
    model = tiny_bert()
    adapter = ours(model, 20, init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2)
    drive(model, adapter, range(20))
    model.eval()
    ids, _ = batch()
    weights = {n: layer.base.weight.clone() for n, layer in adapter.layers.items()}
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        adapter.merge(model)
        merged = model(input_ids=ids).logits
    assert all(layer.merged for layer in adapter.layers.values())
    assert any(not torch.equal(weights[n], layer.base.weight) for n, layer in adapter.layers.items())
    assert torch.allclose(merged, unmerged, atol=1e-5)
    for n, layer in adapter.layers.items():
        layer.unmerge()
        assert torch.allclose(layer.base.weight, weights[n], atol=1e-6)


def test_check_plan_and_schedule_resolution():
    assert resolve_schedule(AdaLoraConfig(), 30) == resolve_schedule(AdaLoraConfig(t_init=3, t_final=6), 30)
    sched = resolve_schedule(AdaLoraConfig(), 30)
    assert (sched.t_init, sched.t_final, sched.delta_t, sched.final_step) == (3, 6, 10, 24)
    AdaLoraAdapter.check_plan(AdaLoraConfig(), ApplyPlan(total_steps=100, targets=TARGETS))
    bad = [(AdaLoraConfig(t_init=0.5, t_final=0.5), 10), (AdaLoraConfig(t_init=6, t_final=4), 10),
           (AdaLoraConfig(t_init=0, t_final=0.01), 20)]  # fmt: skip
    for config, total in bad:
        with pytest.raises(UsageError) as err:
            AdaLoraAdapter.check_plan(config, ApplyPlan(total_steps=total, targets=TARGETS))
        msg = str(err.value)
        assert "\n" not in msg and "t_init" in msg and "t_final" in msg
        # The values it suggests do work.
        t_i, t_f = map(int, re.search(r"e\.g\. t_init=(\d+) t_final=(\d+)", msg).groups())
        AdaLoraAdapter.check_plan(AdaLoraConfig(t_init=t_i, t_final=t_f), ApplyPlan(total, TARGETS))
    for kw in (dict(t_init=2.5), dict(delta_t=0), dict(t_final=-1), dict(budget_unit="bytes")):
        with pytest.raises(UsageError):
            AdaLoraConfig(**kw)


def test_params_mode_ends_within_one_triplet():
    model = tiny_bert()
    targets = find_targets(model, TARGETS)
    costs = [t.d_in + t.d_out + 1 for t in targets]
    budget = 2000
    base = AdaLoraConfig(budget_unit="params", t_init=2, t_final=4, delta_t=2)
    sol = AdaLoraAdapter.for_budget(targets, budget, base)
    assert sol.achieved == budget == AdaLoraAdapter.adapter_count(targets, sol.config)
    # b(0) = 1.5 b(T): a uniform init_r, rounded up (no matrix here is small enough to cap it).
    assert sol.config.init_r == math.ceil(1.5 * budget / sum(costs))
    adapter = AdaLoraAdapter(sol.config)
    adapter.apply(model, ApplyPlan(total_steps=20, targets=TARGETS))
    assert adapter.param_report(model).adapter_peak >= 1.5 * budget
    drive(model, adapter, range(20))
    final = adapter.param_report(model).adapter
    assert budget - max(costs) < final <= budget
    diag = adapter.diagnostics()
    assert diag["budget_unit"] == "params" and diag["budget_curve"][-1][1] == budget
    # At every allocation (even steps after warm-up, every step of the final phase) the kept triplets fit the
    # scheduled parameter budget, and by less than one triplet.
    sched = diag["schedule"]
    for (s1, b), (s2, kept) in zip(diag["budget_curve"], diag["retained_params_curve"], strict=True):
        assert s1 == s2
        if s1 > sched["t_init"] and (s1 % 2 == 0 or s1 >= sched["final_step"]):
            assert b - max(costs) < kept <= b, s1


def test_triplets_mode_for_budget_sets_final_triplets():
    model = tiny_bert()
    targets = find_targets(model, TARGETS)
    mean_cost = sum(t.d_in + t.d_out + 1 for t in targets) / len(targets)
    budget = 1500
    # The paper's mode, asked for by name: a budgeted run's default counts parameters (see the test below).
    base = AdaLoraConfig(t_init=2, t_final=4, delta_t=2, budget_unit="triplets")
    sol = AdaLoraAdapter.for_budget(targets, budget, base)
    b_T = round(budget / mean_cost)
    assert sol.config.target_budget == b_T and sol.achieved == round(b_T * mean_cost)
    assert AdaLoraAdapter.adapter_count(targets, sol.config) == sol.achieved
    assert sol.config.init_r == math.ceil(1.5 * b_T / len(targets))
    assert sol.config.alpha == pytest.approx(base.alpha * sol.config.init_r / base.init_r)
    adapter = AdaLoraAdapter(sol.config)
    adapter.apply(model, ApplyPlan(total_steps=20, targets=TARGETS))
    drive(model, adapter, range(20))
    assert adapter.allocator.retained_triplets == b_T
    assert adapter.diagnostics()["final_budget"] == b_T
    # One triplet per matrix on average is the floor, every matrix at full rank (32) the ceiling.
    for bad, nearest in ((100, sum(t.d_in + t.d_out + 1 for t in targets)), (10**7, round(32 * 10 * mean_cost))):
        with pytest.raises(BudgetError, match=f"nearest achievable: {re.escape(fmt_count(nearest))}$"):
            AdaLoraAdapter.for_budget(targets, bad, base)


def test_gradient_accumulation_matches_full_batch_and_head_trains():
    """Two half-batches accumulated (loss / 2 each, extra_loss on each) give the same allocation as one full
    batch; the hook runs once per optimizer step and curves are indexed by optimizer step, not micro-batch."""
    T = 12
    kw = dict(init_r=4, target_r=2, t_init=2, t_final=3, delta_t=2, orth_reg_weight=0.1)
    runs = []
    for accum in (1, 2):
        model = tiny_bert(dtype=torch.float64)
        torch.manual_seed(5)
        adapter = ours(model, T, **kw)
        head_before = model.classifier.weight.clone()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for step in range(T):
            ids, labels = batch(seed=step, n=8)
            for chunk in range(accum):
                sl = slice(chunk * 8 // accum, (chunk + 1) * 8 // accum)
                loss = model(input_ids=ids[sl], labels=labels[sl]).loss + adapter.extra_loss(model)
                (loss / accum).backward()
            opt.step()
            adapter.on_step_end(model, step)
            opt.zero_grad(set_to_none=True)
        assert not torch.equal(head_before, model.classifier.weight)
        runs.append((model, adapter))
    (m1, a1), (m2, a2) = runs
    d1, d2 = a1.diagnostics(), a2.diagnostics()
    assert d1["final_ranks"] == d2["final_ranks"]
    assert d1["retained_triplets_curve"] == d2["retained_triplets_curve"]
    assert [s for s, _ in d2["orth_reg_curve"]] == list(range(T))
    for (_, v1), (_, v2) in zip(d1["orth_reg_curve"], d2["orth_reg_curve"], strict=True):
        assert v1 == pytest.approx(v2, rel=1e-9)
    for name in a1.layers:
        assert torch.equal(a1.layers[name].kept, a2.layers[name].kept)
        assert torch.allclose(a1.layers[name].lam, a2.layers[name].lam, atol=1e-10)


def test_curves_are_subsampled():
    model = tiny_bert()
    adapter = ours(model, 401, init_r=2, target_r=1, t_init=0.1, t_final=0.1, delta_t=20)
    drive(model, adapter, range(401))
    diag = adapter.diagnostics()
    for key in ("budget_curve", "retained_triplets_curve", "retained_params_curve"):
        curve = diag[key]
        assert len(curve) <= 201 and curve[-1][0] == 400 and curve[0][0] == 0
    assert diag["budget_curve"][0][1] == diag["initial_budget"] and diag["budget_curve"][-1][1] == 10
    steps = [s for s, _ in diag["budget_curve"]]
    assert steps == sorted(steps)
    assert all(isinstance(layer, AdaLoraLinear) for layer in adapter.layers.values())


def per_matrix_penalty(layers, squared: bool) -> torch.Tensor:
    """The regulariser one matrix at a time, as written in the paper and in peft: the reference for the batched
    orth_penalty."""
    terms = []
    for layer in layers:
        for gram in (layer.P.T @ layer.P, layer.Q @ layer.Q.T):
            diff = gram - torch.eye(gram.shape[0], dtype=gram.dtype)
            terms.append((diff * diff).sum() if squared else torch.linalg.matrix_norm(diff, ord="fro"))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("squared", [False, True])
def test_batched_orth_penalty_equals_the_per_matrix_sum(squared):
    """Mixed shapes (P of 32x4 and 37x4, Q of 4x32 and 4x37, stacked per shape): the value and every gradient
    equal the per-matrix loop's, to float64 rounding."""
    model = tiny_bert(dtype=torch.float64)
    adapter = ours(model, 20, init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2, orth_squared=squared)
    drive(model, adapter, range(6))  # P and Q moved off their init, some triplets pruned
    layers = list(adapter.layers.values())
    assert len({layer.P.shape for layer in layers}) > 1 and len({layer.Q.shape for layer in layers}) > 1
    results = []
    for fn in (lambda: orth_penalty(layers, squared), lambda: per_matrix_penalty(layers, squared)):
        for layer in layers:
            layer.P.grad = layer.Q.grad = None
        value = fn()
        value.backward()
        results.append((value.detach(), [(m.P.grad.clone(), m.Q.grad.clone()) for m in layers]))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=0)
    for (p1, q1), (p2, q2) in zip(g1, g2, strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(q1, q2, rtol=1e-10, atol=1e-14)
    # The extra loss is gamma times it.
    torch.testing.assert_close(adapter.extra_loss(model).detach(), adapter.config.orth_reg_weight * v2)


def test_a_budget_is_met_within_one_triplet_by_default():
    """The default unit (auto) counts parameters once a budget is given, and triplets without one (peft's)."""
    model = tiny_bert()
    targets = find_targets(model, TARGETS)
    assert AdaLoraConfig().unit == "triplets"
    sol = AdaLoraAdapter.for_budget(targets, 1500, AdaLoraConfig(t_init=2, t_final=4, delta_t=2))
    assert sol.config.budget_unit == "params" and sol.config.unit == "params"
    assert AdaLoraAdapter.table_note(dataclasses.asdict(sol.config)) == ""
    assert "triplet" in AdaLoraAdapter.table_note({"budget_unit": "triplets", "target_budget": 22})
    assert AdaLoraAdapter.peak_adapter_count(targets, sol.config) >= 1.5 * 1500
    adapter = AdaLoraAdapter(sol.config)
    adapter.apply(model, ApplyPlan(total_steps=20, targets=TARGETS))
    drive(model, adapter, range(20))
    costs = [t.d_in + t.d_out + 1 for t in targets]
    assert 1500 - max(costs) < adapter.allocator.retained_params <= 1500
