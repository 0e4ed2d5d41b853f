"""LoRA, DoRA and AdaLoRA under CPU bf16 autocast: against peft 0.21 under the same autocast, with the frozen
base stored in float32 (autocast casts it per call) or in bf16 (`store_frozen_as`, the fused path)."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from torch import nn

from peftbench.adapters import lora as lora_mod
from peftbench.adapters.base import ApplyPlan, store_frozen_as
from peftbench.adapters.dora import DoraLinear, dora_row_norm
from peftbench.adapters.full import FullAdapter, FullConfig
from peftbench.adapters.lora import LoraAdapter, LoraConfig, LoraLinear
from peftbench.config import DEFAULT_TARGETS
from tests import test_adalora, test_dora, test_lora

BF16 = torch.bfloat16

# Tolerance of ours against peft, both under bf16 autocast, as a relative Frobenius norm ||ours - peft|| / ||peft||.
# bf16 keeps 8 significant bits: neighbouring values are 2^-8 ~ 3.9e-3 apart (relative), so one rounding moves a
# value by up to u = 2^-9. A GEMM rounds its two operands and its output; with float32 accumulation over a
# reduction of length d the d product errors have random signs and add up like sqrt(d) * u * |term|, which for
# an incoherent sum is about u * |y|: each GEMM leaves a normwise error of about sqrt(3) u ~ 3.4e-3 (one adapted
# layer measured against float32: 3.5e-3 to 4e-3). The two implementations round at different places (we round
# W + s B A once, peft rounds W and the thin products apart), so their errors are independent and their
# difference is about sqrt(2) times one path's. Along the tiny BERT's path (2 blocks of 6 GEMMs, attention and
# LayerNorm in bf16 too) the errors of successive GEMMs add in quadrature, hence 4 spacings for outputs
# (measured: at most 7.5e-3). Backward runs each chain again and a parameter's gradient is a reduction over
# every token of products of two such values (and for small entries of lambda or of a thin factor, a
# cancelling one), hence 16 spacings per gradient tensor: measured at most 2.6e-2, while peft's own bf16
# gradients are up to 3.8e-2 away from its float32 ones. A real mismatch (a missing s, a wrong g, a dropped
# term) moves outputs and gradients by 10% or more.
OUT_TOL = 4 * 2**-8
GRAD_TOL = 16 * 2**-8


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).norm() / theirs.norm())


def autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused kernel, so a test can tell which path it exercised."""
    calls = []
    original = lora_mod._LowRankLinear.apply

    def counting(*args):
        calls.append(args[1].dtype)
        return original(*args)

    monkeypatch.setattr(lora_mod._LowRankLinear, "apply", counting)
    return calls


def check_against_peft(mine, theirs, pairs, inputs, storage, fused_calls, base):
    """Forward both under autocast with `storage` frozen weights; compare the last hidden states and the
    logits, then the gradients of every (our parameter, peft parameter) pair after backward of the same loss."""
    if storage == "bf16":
        assert store_frozen_as(mine, BF16) > 0
        assert store_frozen_as(theirs, BF16) > 0
    for p, q in pairs:
        assert p.dtype == q.dtype == torch.float32  # adapter master weights stay float32 in both
    with autocast():
        out_mine = mine(**inputs, output_hidden_states=True)
        out_theirs = theirs(**inputs, output_hidden_states=True)
        with torch.no_grad():
            out_base = base(**inputs, output_hidden_states=True)
    # Stored bf16, every adapted layer takes the fused path; stored float32 under autocast, none does.
    assert bool(fused_calls) == (storage == "bf16")
    assert all(dt == BF16 for dt in fused_calls)
    h_mine, h_theirs = out_mine.hidden_states[-1], out_theirs.hidden_states[-1]
    assert rel_err(h_mine, h_theirs) < OUT_TOL, rel_err(h_mine, h_theirs)
    assert rel_err(out_mine.logits, out_theirs.logits) < OUT_TOL
    # The comparison means something only if the adapter moves the output by more than the tolerance.
    assert rel_err(h_mine, out_base.hidden_states[-1]) > 1.5 * OUT_TOL
    # A fixed random projection: the sum of squares of a LayerNorm output would have no gradient to speak of.
    proj = torch.randn(h_mine.shape, generator=torch.Generator().manual_seed(0))
    (h_mine.float() * proj).sum().backward()
    (h_theirs.float() * proj).sum().backward()
    for p, q in pairs:
        assert p.grad is not None and p.grad.dtype == torch.float32
        err = rel_err(p.grad.view_as(q.grad), q.grad)
        assert err < GRAD_TOL, err


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lora_matches_peft_under_autocast(mode, storage, fused_calls):
    _, mine, theirs = test_lora._pair()
    mine.train(mode == "train")
    theirs.train(mode == "train")
    pairs = []
    for name, m in mine.named_modules():
        if isinstance(m, LoraLinear):
            pm = theirs.base_model.model.get_submodule(name)
            pairs += [(m.lora_A, pm.lora_A["default"].weight), (m.lora_B, pm.lora_B["default"].weight)]
    base = test_lora._base_model()
    check_against_peft(mine, theirs, pairs, test_lora._inputs(), storage, fused_calls, base)


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dora_matches_peft_under_autocast(mode, storage, fused_calls):
    mine, theirs = test_dora.ours_and_peft()
    mine.train(mode == "train")
    theirs.train(mode == "train")
    pairs = []
    for name, layer in test_dora.dora_layers(mine).items():
        a, b, m = test_dora.peft_params(theirs, name)
        pairs += [(layer.lora_A, a), (layer.lora_B, b), (layer.magnitude, m)]
    check_against_peft(mine, theirs, pairs, test_dora.batch(), storage, fused_calls, test_dora.tiny_bert())


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_adalora_matches_peft_under_autocast(mode, storage, fused_calls):
    base = test_adalora.tiny_bert()
    theirs = test_adalora.with_peft(copy.deepcopy(base), 30)
    mine = copy.deepcopy(base)
    adapter = test_adalora.ours(mine, 30, init_r=4, target_r=2, t_init=3, t_final=5, delta_t=2)
    # P and Q 3x larger than at init (the float32 test uses 10x, which changes the hidden states by 145%, far
    # from fine-tuning, where attention amplifies bf16's noise): the update moves the hidden states by ~9%.
    test_adalora.copy_from_peft(theirs, adapter, scale_pq=3.0)
    mine.train(mode == "train")
    theirs.train(mode == "train")
    # peft pairs lora_B with P, lora_E with lambda, lora_A with Q.
    pairs = [(ours_p, peft_p) for _, ps in test_adalora.triplet_pairs(theirs, adapter) for peft_p, ours_p in ps]
    ids, _ = test_adalora.batch()
    # peft's model wrapper would add the orthogonal regulariser to a loss; compare the bare models' logits.
    check_against_peft(mine, theirs.base_model.model, pairs, {"input_ids": ids}, storage, fused_calls, base)


# --- DoRA's magnitude below bf16's resolution ----------------------------------------------------------------


class _OneLinear(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("path", ["train", "eval", "dropout", "few-tokens"])
def test_dora_magnitude_change_below_bf16_resolution_moves_the_output(path, storage):
    """m *= 1.003 is below bf16's spacing of g = m / ||W + s B A|| = 1: a g rounded to bf16 would not move and
    the output would not change at all. peft keeps g and the sum it scales in float32 and rounds the layer's
    output once to bf16, so about 3/4 of the outputs move by one bf16 step; so must ours, on every path (fused,
    unfused, dropout, no-grad). Measured with peft: 4e-3 relative."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    lin.requires_grad_(False)
    mine = DoraLinear(copy.deepcopy(lin), r=8, alpha=16.0, dropout=0.1 if path == "dropout" else 0.0)
    cfg = peft.LoraConfig(r=8, lora_alpha=16.0, lora_dropout=mine.dropout.p if path == "dropout" else 0.0,
                          use_dora=True, target_modules=["lin"])  # fmt: skip
    theirs = peft.get_peft_model(_OneLinear(copy.deepcopy(lin)), cfg).base_model.model.lin
    with torch.no_grad():
        mine.lora_B.normal_(0.0, 0.1)
        # m = ||W + s B A||, as DoRA initialises it: g = 1, whose bf16 neighbours are 2^-8 below and 2^-7 above.
        mine.magnitude.copy_(dora_row_norm(lin.weight, mine.lora_A, mine.lora_B, mine.scaling))
        theirs.lora_A["default"].weight.copy_(mine.lora_A)
        theirs.lora_B["default"].weight.copy_(mine.lora_B)
        theirs.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)
    if storage == "bf16":
        store_frozen_as(mine, BF16)
        store_frozen_as(theirs, BF16)
    mine.train(path != "eval")
    theirs.train(path != "eval")
    # Activations arrive in bf16 under autocast (LayerNorm and the GEMMs before keep it).
    x = torch.randn(1 if path == "few-tokens" else 4, 32, 64).to(BF16)
    magnitudes = (mine.magnitude, theirs.lora_magnitude_vector["default"].weight)

    def outputs():
        results = []
        for layer in (mine, theirs):
            torch.manual_seed(7)  # the same dropout mask before and after the change
            with autocast(), torch.set_grad_enabled(path != "eval"):
                results.append(layer(x).detach().float())
        return results

    before = outputs()
    with torch.no_grad():
        for m in magnitudes:
            m.mul_(1.003)
    after = outputs()
    change_mine, change_theirs = (rel_err(a, b) for a, b in zip(after, before, strict=True))
    assert change_theirs > 1e-3
    assert change_mine > 0
    assert math.isclose(change_mine, change_theirs, rel_tol=0.1), (change_mine, change_theirs)
    # The magnitude gets its gradient in float32 too.
    if path != "eval":
        with autocast():
            mine(x).float().sum().backward()
        assert mine.magnitude.grad.dtype == torch.float32 and mine.magnitude.grad.abs().sum() > 0


@pytest.mark.parametrize("with_bias", [True, False])
def test_scale_rows_in_blocks_equals_one_float32_pass(with_bias):
    """The CPU path for a bf16 h and a float32 g widens a block of rows at a time (torch's mixed-dtype kernel is
    a scalar loop): the result must be the one float32 pass rounded once, bit for bit, over several blocks, a
    partial last block and a strided h (the fused layer's output is a view of a wider product)."""
    torch.manual_seed(0)
    wide = torch.randn(3, 300, 392).to(BF16)
    h = wide[..., :384]  # 900 rows: blocks of 341, the last one partial
    g = torch.rand(384) + 0.5
    bias = torch.randn(384).to(BF16) if with_bias else None
    expected = (h.float() * g if bias is None else torch.addcmul(bias.float(), h.float(), g)).to(BF16)
    with torch.no_grad():
        got = lora_mod.scale_rows(h, g, bias)
    assert got.dtype == BF16 and got.shape == h.shape and got.is_contiguous()
    assert torch.equal(got, expected)


def test_column_dot_of_bf16_rows_is_summed_in_float32():
    """DoRA's magnitude gradient sum_t dy[t, j] h[t, j]: widened before multiplying, as peft's float32 autograd
    does, not a bf16 product (8 bits) per term. Measured: 1e-7 relative to float64, where bf16 products give
    about 1e-3."""
    torch.manual_seed(0)
    a = torch.randn(1000, 384).to(BF16)
    b = torch.randn(1000, 392).to(BF16)[:, :384]
    exact = (a.double() * b.double()).sum(0)
    got = lora_mod._column_dot(a, b)
    assert got.dtype == torch.float32
    assert rel_err(got.double(), exact) < 1e-6
    bf16_products = (a * b).float().sum(0).double()
    assert rel_err(bf16_products, exact) > 1e-4  # the tolerance above tells the two apart
    a32, b32 = a.float(), b.float()
    assert torch.allclose(lora_mod._column_dot(a32, b32), (a32 * b32).sum(0), rtol=1e-5, atol=1e-4)


# --- storing the frozen model in bf16 ------------------------------------------------------------------------


def _bert():
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=2))


def test_store_frozen_as_casts_only_frozen_non_head_parameters():
    model = LoraAdapter(LoraConfig(r=2)).apply(_bert(), ApplyPlan(10, DEFAULT_TARGETS))
    model.classifier.requires_grad_(False)  # a frozen head still stays float32
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad and p.dim() == 2 and not n.startswith("classifier")]
    assert any("word_embeddings" in n for n in frozen) and any(n.endswith("query.base.weight") for n in frozen)
    n = store_frozen_as(model, BF16)
    assert n == len(frozen)
    for name, p in model.named_parameters():
        # Biases and LayerNorm vectors stay float32 (see store_frozen_as), as do the adapters and the head.
        expect = BF16 if name in frozen else torch.float32
        assert p.dtype == expect, name
    assert store_frozen_as(model, BF16) == 0  # idempotent
    # Buffers (position ids, AdaLoRA's masks) are not parameters and keep their dtype.
    assert all(b.dtype != BF16 for b in model.buffers())


def test_store_frozen_as_leaves_full_fine_tuning_alone_and_keeps_ties():
    model = FullAdapter(FullConfig()).apply(_bert(), ApplyPlan(10, DEFAULT_TARGETS))
    assert store_frozen_as(model, BF16) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    tied.requires_grad_(False)
    store_frozen_as(tied, BF16)
    assert tied[1].weight is tied[0].weight and tied[0].weight.dtype == BF16


@pytest.mark.parametrize("kind", ["lora", "dora", "adalora"])
def test_training_steps_with_bf16_storage_move_only_adapters(kind):
    """A few optimizer steps under autocast on a bf16-stored base: the loss is finite, the adapters (float32)
    move, and the frozen bf16 weights are untouched."""
    from peftbench import registry

    cls = registry.adapters.get(kind)
    adapter = cls(cls.config_cls())
    model = adapter.apply(_bert(), ApplyPlan(20, DEFAULT_TARGETS)).train()
    store_frozen_as(model, BF16)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 900, (8, 16), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        with autocast():
            loss = model(input_ids=ids, labels=torch.arange(8) % 2).loss
            extra = adapter.extra_loss(model)
            total = loss if extra is None else loss + extra
        total.backward()
        opt.step()
        adapter.on_step_end(model, step)
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(total)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    moved = [n for n, p in trainable.items() if not torch.equal(params[n], p)]
    assert any(not n.startswith("classifier") for n in moved)
    assert all(params[n].dtype == torch.float32 for n in trainable)


def test_head_in_float32_keeps_regression_outputs_apart_under_autocast():
    """An STS-B head under bf16 autocast: two rows whose scores differ by less than bf16's spacing near 2.7
    (2^-6) were one value, so a model that had learned a little predicted a constant. With the head in float32
    they stay apart, the logits are float32, and the value is the float32 head applied to the bf16 features."""
    from transformers import BertForSequenceClassification

    from peftbench.adapters.base import head_in_float32
    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    model = LoraAdapter(LoraConfig(r=2)).apply(model, ApplyPlan(10, DEFAULT_TARGETS))
    store_frozen_as(model, BF16)
    with torch.no_grad():
        model.classifier.weight.mul_(1e-3)  # outputs within a few thousandths of the bias, as a model near the mean
        model.classifier.bias.fill_(2.7)
    ids = torch.randint(5, 90, (8, 12))

    def predict():
        with torch.no_grad(), autocast():
            return model(input_ids=ids).logits.squeeze(-1)

    rounded = predict()
    assert rounded.dtype == BF16 and rounded.unique().numel() <= 2  # the failure: one or two values for 8 rows
    assert head_in_float32(model) == 1
    assert head_in_float32(model) == 0  # idempotent
    out = predict()
    # (two rows' bf16 features may still coincide, hence not necessarily 8)
    assert out.dtype == torch.float32 and out.unique().numel() >= rounded.unique().numel() + 4
    with torch.no_grad(), autocast():
        pooled = model.bert(input_ids=ids).pooler_output
    expect = pooled.float() @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(out, expect.squeeze(-1), rtol=0, atol=1e-6)
    # Gradients still reach the head's float32 parameters and the adapters below it.
    with autocast():
        loss = model(input_ids=ids, labels=torch.full((8,), 3.0)).loss
    loss.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.dtype == torch.float32
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
