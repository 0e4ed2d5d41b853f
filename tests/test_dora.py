"""DoRA checked against peft 0.21's DoRA (LoraConfig(use_dora=True)) on a tiny BERT built from a config."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from peftbench.adapters.base import ApplyPlan, find_targets, fmt_count
from peftbench.adapters.dora import DoraAdapter, DoraConfig, DoraLinear, dora_row_norm
from peftbench.errors import BudgetError, UsageError

# query/value are square; intermediate.dense (32 -> 37) and output.dense (37 -> 32, and attention.output.dense)
# are not, so a transposed norm or magnitude would show.
TARGETS = ("query", "value", "intermediate.dense", "output.dense")
TOL = {"atol": 1e-5, "rtol": 1e-5}


def tiny_bert(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=3,
    )
    model = BertForSequenceClassification(cfg)
    # BERT initialises biases to zero; DoRA must leave the bias out of the rescaling, so give them values.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0.0, 0.1)
    return model


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def dora_layers(model: torch.nn.Module) -> dict[str, DoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DoraLinear)}


def apply_ours(base: torch.nn.Module, config: DoraConfig) -> tuple[DoraAdapter, torch.nn.Module]:
    model = copy.deepcopy(base)
    adapter = DoraAdapter(config)
    adapter.apply(model, ApplyPlan(total_steps=1, targets=TARGETS))
    return adapter, model


def perturb(model: torch.nn.Module, seed: int = 2) -> None:
    """Move B off zero and m off ||W|| so every term of the DoRA formula is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in dora_layers(model).values():
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            layer.magnitude.mul_(1 + 0.2 * torch.randn(layer.magnitude.shape, generator=g))


def assert_grad_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Within 1e-5 of the largest entry: gradients deep in a tiny BERT are ~1e-7, below any absolute 1e-5."""
    scale = theirs.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-5, rtol=0)


def ours_and_peft(dropout: float = 0.0, rslora: bool = False, bert_dropout: float = 0.0):
    """Our DoRA and peft's on copies of one base model, with A, B and m copied from ours into peft's."""
    base = tiny_bert(bert_dropout)
    config = DoraConfig(r=4, alpha=8.0, dropout=dropout, rslora=rslora)
    _, ours = apply_ours(base, config)
    perturb(ours)
    pcfg = peft.LoraConfig(
        r=4, lora_alpha=8.0, lora_dropout=dropout, use_rslora=rslora, use_dora=True, target_modules=list(TARGETS)
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), pcfg)
    inner = theirs.base_model.model
    layers = dora_layers(ours)
    assert {n for n, m in inner.named_modules() if isinstance(m, peft.tuners.lora.Linear)} == set(layers)
    with torch.no_grad():
        for name, layer in layers.items():
            p = inner.get_submodule(name)
            p.lora_A["default"].weight.copy_(layer.lora_A)
            p.lora_B["default"].weight.copy_(layer.lora_B)
            p.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    return ours, theirs


def peft_params(theirs, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = theirs.base_model.model.get_submodule(name)
    return p.lora_A["default"].weight, p.lora_B["default"].weight, p.lora_magnitude_vector["default"].weight


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_outputs_and_gradients_match_peft(train: bool, rslora: bool) -> None:
    ours, theirs = ours_and_peft(rslora=rslora)
    ours.train(train)
    theirs.train(train)
    x = batch()
    out_ours, out_theirs = ours(**x).logits, theirs(**x).logits
    torch.testing.assert_close(out_ours, out_theirs, **TOL)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for name, layer in dora_layers(ours).items():
        a, b, m = peft_params(theirs, name)
        assert layer.magnitude.grad is not None and layer.magnitude.grad.abs().sum() > 0
        assert_grad_close(layer.lora_A.grad, a.grad)
        assert_grad_close(layer.lora_B.grad, b.grad)
        assert_grad_close(layer.magnitude.grad, m.grad)


def test_dropout_in_train_mode_matches_peft_with_the_same_seed() -> None:
    # Both call one nn.Dropout per adapted layer, in the same module order, so seeded masks coincide; BERT's own
    # dropout is on too, to show the interleaving of draws is the same.
    ours, theirs = ours_and_peft(dropout=0.3, bert_dropout=0.1)
    ours.train()
    theirs.train()
    x = batch()
    torch.manual_seed(123)
    out_ours = ours(**x).logits
    torch.manual_seed(123)
    out_theirs = theirs(**x).logits
    torch.testing.assert_close(out_ours, out_theirs, **TOL)
    # The masks are really random: another seed gives another output.
    torch.manual_seed(124)
    assert not torch.allclose(ours(**x).logits, out_ours, atol=1e-3)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for name, layer in dora_layers(ours).items():
        a, b, m = peft_params(theirs, name)
        assert_grad_close(layer.lora_A.grad, a.grad)
        assert_grad_close(layer.lora_B.grad, b.grad)
        assert_grad_close(layer.magnitude.grad, m.grad)


@pytest.mark.parametrize("train", [True, False])
def test_identity_at_initialisation(train: bool) -> None:
    base = tiny_bert()
    _, ours = apply_ours(base, DoraConfig(r=4, alpha=8.0, dropout=0.2))
    for layer in dora_layers(ours).values():
        assert torch.all(layer.lora_B == 0)
        torch.testing.assert_close(layer.magnitude, torch.linalg.norm(layer.base.weight, dim=1))
    base.train(train)
    ours.train(train)
    x = batch()
    torch.manual_seed(5)
    expected = base(**x).logits
    torch.manual_seed(5)
    # In train mode the adapter's dropout draws masks, but with B = 0 and m = ||W|| they cannot change anything.
    torch.testing.assert_close(ours(**x).logits, expected, atol=1e-6, rtol=1e-6)


def test_merge_equals_unmerged_matches_peft_and_unmerge_restores() -> None:
    ours, theirs = ours_and_peft()
    ours.eval()
    theirs.eval()
    x = batch()
    before = ours(**x).logits
    layers = dora_layers(ours)
    weights = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    DoraAdapter(DoraConfig()).merge(ours)
    theirs.merge_adapter()
    torch.testing.assert_close(ours(**x).logits, before, **TOL)
    h = torch.randn(5, 37)
    for name, layer in layers.items():
        assert layer.merged
        w_theirs = theirs.base_model.model.get_submodule(name).get_base_layer().weight
        torch.testing.assert_close(layer.base.weight, w_theirs, **TOL)
        # Merged, the layer is a plain Linear: the adapter takes no part in the output.
        xi = h[:, : layer.base.in_features]
        assert torch.equal(layer(xi), F.linear(xi, layer.base.weight, layer.base.bias))
    for name, layer in layers.items():
        layer.unmerge()
        assert not layer.merged
        torch.testing.assert_close(layer.base.weight, weights[name], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours(**x).logits, before, **TOL)


def fresh_logits(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    for layer in dora_layers(model).values():
        layer.clear_cache()
    with torch.no_grad():
        return model(**x).logits


def test_norm_is_cached_in_eval() -> None:
    ours, _ = ours_and_peft()
    ours.eval()
    layer = next(iter(dora_layers(ours).values()))
    first = layer.row_norm()
    assert layer.row_norm() is first
    torch.testing.assert_close(first, torch.linalg.norm(layer.base.weight + layer.delta_weight(), dim=1))
    ours.train()
    assert layer._norm_cache is None


@pytest.mark.parametrize("foreach", [False, True])
def test_optimizer_step_in_eval_mode_invalidates_the_cached_norm(foreach: bool) -> None:
    ours, _ = ours_and_peft()
    ours.eval()
    x = batch()
    layers = dora_layers(ours).values()
    # Only A and B move, so a stale norm would be the only way for the output to differ from a fresh one.
    opt = torch.optim.Adam([p for m in layers for p in (m.lora_A, m.lora_B)], lr=0.05, foreach=foreach)
    ours(**x).logits.square().sum().backward()  # fills the cache
    norms = [m.row_norm().clone() for m in layers]
    opt.step()
    assert all(not torch.allclose(m.row_norm(), n, atol=1e-4) for m, n in zip(layers, norms, strict=True))
    with torch.no_grad():
        after = ours(**x).logits
    assert torch.equal(after, fresh_logits(ours, x))


def test_step_in_train_then_eval_and_load_state_dict_invalidate() -> None:
    ours, _ = ours_and_peft()
    x = batch()
    opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    ours.eval()
    with torch.no_grad():
        ours(**x)  # a cached norm from before training
    ours.train()
    ours(**x).logits.square().sum().backward()
    opt.step()
    ours.eval()
    with torch.no_grad():
        after = ours(**x).logits
    assert torch.equal(after, fresh_logits(ours, x))
    # A checkpoint loaded into an eval-mode model (copy_ into the parameters) is seen too.
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    for k in state:
        if k.endswith("lora_B"):
            state[k].mul_(-2.0)
    ours.load_state_dict(state)
    with torch.no_grad():
        loaded = ours(**x).logits
    assert not torch.allclose(loaded, after, atol=1e-4)
    assert torch.equal(loaded, fresh_logits(ours, x))


def test_row_norm_matches_the_direct_formula() -> None:
    g = torch.Generator().manual_seed(3)
    w, a, b = torch.randn(37, 32, generator=g), torch.randn(6, 32, generator=g), torch.randn(37, 6, generator=g)
    for s in (0.0, 0.5, 4.0):
        torch.testing.assert_close(dora_row_norm(w, a, b, s), torch.linalg.norm(w + s * (b @ a), dim=1), **TOL)
    # The norm is a constant for autograd (DoRA section 4.3).
    assert not dora_row_norm(w, a.requires_grad_(), b, 1.0).requires_grad


def test_parameter_count_matches_the_formula_and_peft() -> None:
    ours, theirs = ours_and_peft()
    base = tiny_bert()
    targets = find_targets(base, TARGETS)
    config = DoraConfig(r=4, alpha=8.0)
    expected = sum(4 * (t.d_in + t.d_out) + t.d_out for t in targets)
    assert len(targets) == 10  # 5 per layer: query, value, intermediate, attention.output and output dense
    assert DoraAdapter.adapter_count(targets, config) == expected
    report = DoraAdapter(config).param_report(ours)
    assert report.adapter == expected
    assert report.head == sum(p.numel() for p in ours.classifier.parameters())
    # peft leaves the head frozen here, so its trainable count is the adapter alone.
    assert theirs.get_nb_trainable_parameters()[0] == expected


def test_for_budget_picks_the_closest_integer_rank() -> None:
    targets = find_targets(tiny_bert(), TARGETS)
    base = DoraConfig(r=8, alpha=16.0)
    per_rank = sum(t.d_in + t.d_out for t in targets)
    fixed = sum(t.d_out for t in targets)
    top = min(min(t.d_in, t.d_out) for t in targets)
    for budget in (fixed + 3 * per_rank, fixed + 5 * per_rank + per_rank // 3, fixed + 7 * per_rank - per_rank // 3):
        sol = DoraAdapter.for_budget(targets, budget, base)
        best = min(range(1, top + 1), key=lambda r: abs(fixed + r * per_rank - budget))
        assert sol.config.r == best
        assert sol.achieved == DoraAdapter.adapter_count(targets, sol.config) == fixed + best * per_rank
        assert sol.config.alpha / sol.config.r == base.alpha / base.r


@pytest.mark.parametrize("too", ["small", "large"])
def test_unreachable_budget_names_the_nearest_achievable(too: str) -> None:
    targets = find_targets(tiny_bert(), TARGETS)
    top = min(min(t.d_in, t.d_out) for t in targets)
    lo = DoraAdapter.adapter_count(targets, DoraConfig(r=1))
    hi = DoraAdapter.adapter_count(targets, DoraConfig(r=top))
    budget, nearest = (10, lo) if too == "small" else (hi * 10, hi)
    with pytest.raises(BudgetError, match=f"nearest achievable: {fmt_count(nearest)}"):
        DoraAdapter.for_budget(targets, budget, DoraConfig())


def test_rank_below_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="rank must be >= 1"):
        apply_ours(tiny_bert(), DoraConfig(r=0))
