"""On a CUDA device: our LoRA, DoRA and AdaLoRA against peft's under bf16 (and fp16) autocast, and one tiny
training run per method through `peftbench run`. The CPU fp32 versions of the comparisons are in test_lora.py,
test_dora.py and test_adalora.py; their model builders and weight copying are reused from there.

Run with `pytest -m cuda` on a GPU machine (scripts/gpu_check.sh does); without CUDA every test is skipped."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from tests import test_adalora as ada_cpu
from tests import test_dora as dora_cpu
from tests import test_lora as lora_cpu
from tests.helpers import FAST

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

CUDA = torch.device("cuda")
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
# Relative (norm) distances: bf16 keeps 8 bits of mantissa (~0.4% per rounding) and a tiny BERT rounds a few
# dozen times on the way to its logits, so implementations that order their products differently agree to
# about 1% in bf16, not to 1e-5 as in fp32. Gradients are compared over all adapter parameters at once: one
# matrix's gradient can be ~1e-7, where half-precision noise alone is 100% of it, for peft as for us.
TOL = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
# As a GradScaler would: without it fp16 gradients of a tiny model underflow (harmless in bf16).
LOSS_SCALE = 2.0**12


@dataclass
class Case:
    ours: Callable[[], torch.Tensor]  # logits of our adapted model
    theirs: Callable[[], torch.Tensor]  # logits of peft's, same weights
    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (peft's parameter, ours)


def lora_case(device: torch.device) -> Case:
    _, mine, theirs = lora_cpu._pair()
    mine, theirs = mine.to(device).train(), theirs.to(device).train()
    x = {k: v.to(device) for k, v in lora_cpu._inputs().items()}
    inner = theirs.base_model.model
    pairs = []
    for name, m in mine.named_modules():
        if isinstance(m, lora_cpu.LoraLinear):
            p = inner.get_submodule(name)
            pairs += [(p.lora_A["default"].weight, m.lora_A), (p.lora_B["default"].weight, m.lora_B)]
    assert len(pairs) == 2 * 12
    return Case(lambda: mine(**x).logits, lambda: theirs(**x).logits, pairs)


def dora_case(device: torch.device) -> Case:
    mine, theirs = dora_cpu.ours_and_peft()
    mine, theirs = mine.to(device).train(), theirs.to(device).train()
    x = {k: v.to(device) for k, v in dora_cpu.batch().items()}
    pairs = []
    for name, layer in dora_cpu.dora_layers(mine).items():
        pa, pb, pm = dora_cpu.peft_params(theirs, name)
        pairs += [(pa, layer.lora_A), (pb, layer.lora_B), (pm, layer.magnitude)]
    return Case(lambda: mine(**x).logits, lambda: theirs(**x).logits, pairs)


def adalora_case(device: torch.device) -> Case:
    base = ada_cpu.tiny_bert()
    pm = ada_cpu.with_peft(copy.deepcopy(base), 30)
    model = copy.deepcopy(base)
    adapter = ada_cpu.ours(model, 30, init_r=4, target_r=2, dropout=0.0, t_init=3, t_final=5, delta_t=2)
    ada_cpu.copy_from_peft(pm, adapter, scale_pq=10.0)  # on the CPU: the copy draws from a CPU generator
    inner, model = pm.base_model.model.to(device).train(), model.to(device).train()
    ids = ada_cpu.batch()[0].to(device)
    pairs = [pair for _, ps in ada_cpu.triplet_pairs(pm, adapter) for pair in ps]
    # peft's inner model: the outer one would add the orthogonal regulariser, which is not compared here.
    return Case(lambda: model(input_ids=ids).logits, lambda: inner(input_ids=ids).logits, pairs)


CASES = {"lora": lora_case, "dora": dora_case, "adalora": adalora_case}


def _distance(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().float(), ref.detach().float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_autocast_close(what: str, ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Ours agrees with peft's within half-precision rounding, and is no further from the fp32 result than
    peft's is (within a margin): a cast in the wrong place would show as a larger error than peft's."""
    apart = _distance(ours, theirs)
    assert apart < tol, f"{what}: ours and peft's are {apart:.2e} apart"
    err_ours, err_theirs = _distance(ours, ref), _distance(theirs, ref)
    assert err_ours <= 2 * err_theirs + tol / 4, f"{what}: ours {err_ours:.2e} from fp32, peft's {err_theirs:.2e}"


def check_against_peft(case: Case, device: torch.device, dtype: torch.dtype) -> None:
    ours_params = [m for _, m in case.pairs]
    # The fp32 reference, from ours: in fp32 ours and peft's agree to 1e-5 (the CPU tests).
    reference = case.ours()
    reference.float().square().sum().backward()
    ref_grad = torch.cat([m.grad.flatten() for m in ours_params])
    for m in ours_params:
        m.grad = None
    with torch.autocast(device.type, dtype=dtype):
        a, b = case.ours(), case.theirs()
    assert a.dtype == b.dtype == dtype  # the classifier ran in half precision: autocast was in effect
    assert_autocast_close("logits", a, b, reference.detach(), TOL[dtype])
    (a.float().square().sum() * LOSS_SCALE).backward()
    (b.float().square().sum() * LOSS_SCALE).backward()
    g_ours = torch.cat([m.grad.flatten() for m in ours_params]) / LOSS_SCALE
    g_theirs = torch.cat([t.grad.reshape(m.shape).flatten() for t, m in case.pairs]) / LOSS_SCALE
    assert_autocast_close("gradients", g_ours, g_theirs, ref_grad, 2 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(CASES))
def test_matches_peft_under_autocast(method, dtype):
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16")
    check_against_peft(CASES[method](CUDA), CUDA, dtype)


def _run_accepts_device() -> bool:
    """Whether `peftbench run` has --device yet; before it does, a run takes the GPU whenever one is visible."""
    from peftbench.harness.cli import build_parser

    _, unknown = build_parser().parse_known_args(["run", "--device", "cuda"])
    return "--device" not in unknown


@pytest.mark.parametrize("method", ["full", "lora", "dora", "adalora"])
def test_tiny_training_run_on_cuda(method, tiny_model_dir, tmp_path):
    from peftbench.harness.cli import main
    from peftbench.records import iter_records

    argv = ["run", "--task", "sst2", "--method", method, "--model", str(tiny_model_dir), "--results", str(tmp_path)]
    argv += ["--quiet"] + [arg for s in FAST for arg in ("--set", s)]
    if _run_accepts_device():
        argv += ["--device", "cuda"]
    assert main(argv) == 0
    [rec] = list(iter_records(tmp_path))
    assert rec.ok, rec.data and rec.data.get("error")
    data = rec.data
    assert data["env"]["device"].startswith("cuda") and data["env"].get("gpu")
    assert data["perf"]["peak_memory_kind"] == "cuda_max_allocated" and data["perf"]["peak_memory_bytes"] > 0
    assert all(math.isfinite(loss) for _, loss, _ in data["train"]["loss_history"])
    assert data["params"]["trainable"] > 0
