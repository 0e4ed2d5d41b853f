"""`peftbench perf` on a tiny BERT (every section, one or two steps per item: no timing assertions), and the
fused low-rank layer it measures checked against the unfused formulas, values and gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from peftbench.adapters import lora as lora_mod
from peftbench.adapters.adalora import AdaLoraLinear
from peftbench.adapters.dora import DoraLinear
from peftbench.adapters.lora import LoraLinear
from peftbench.harness.cli import main

# Trains real runs in child processes (or loads the embedded MiniLM): the full suite, not make test-fast.
pytestmark = pytest.mark.slow

METHODS = ["floor (frozen, input grads only)", "full", "lora", "dora", "adalora", "peft lora", "peft dora",
           "peft adalora"]  # fmt: skip
SHAPE_HEADINGS = ["## Training step: fixed shape, batch 8 x 32 tokens", "## Training step: SST-2 sample batches",
                  "## Training step: MNLI sample batches"]  # fmt: skip
TARGETS = [
    "native lora step <= 1.05x floor",
    "native dora step <= 1.12x floor",
    "native adalora step <= 1.08x floor",
    "native lora step <= 0.95x peft lora",
    "native dora step <= 0.95x peft dora",
    "native adalora step <= 0.95x peft adalora",
    "LoRA peak memory <= full FT's",
    "SST-2 epoch, length-grouped >= 3x faster than padded to 128",
    "harness overhead <= 5% of a bare loop (training, CPU time)",
    "harness overhead <= 5% of a bare loop (whole run, CPU time)",
    "peftbench >= 1.3x faster than Trainer + peft (whole run, CPU time)",
    "same accuracy within noise",
]


@pytest.fixture(scope="module")
def perf_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "cpu.md"
    threads = torch.get_num_threads()
    sizes = ["--batch-size", "8", "--seq-len", "32", "--epoch-rows", "48", "--e2e-rows", "48", "--eval-rows", "24"]
    argv = ["perf", "--model", str(tiny_model_dir), "--warmup", "2", "--steps", "1", *sizes, "--out", str(out),
            "--methods", "full,lora,dora,adalora"]  # fmt: skip
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)  # perf runs on one thread; the rest of the session should not
    return code, out


def _table_rows(md: str, heading: str) -> list[str]:
    """Data rows of the first table after `heading`, first cell only."""
    lines = md[md.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append(ln.split("|")[1].strip())
    return rows


def test_perf_writes_every_row(perf_run):
    code, out = perf_run
    assert code == 0
    md = out.read_text()
    assert md.startswith("# peftbench perf: cpu")
    assert "- command: `peftbench perf --device cpu --model " in md and "--steps 1" in md
    targets = _table_rows(md, "## Targets")
    assert len(targets) == len(TARGETS)
    for want, got in zip(TARGETS, targets, strict=True):
        assert got.startswith(want), (want, got)
    for heading in SHAPE_HEADINGS:
        assert _table_rows(md, heading) == METHODS, heading
    assert _table_rows(md, "## SST-2 epoch") == ["length-grouped, dynamic padding", "every batch padded to 128"]
    assert _table_rows(md, "## Harness overhead") == ["peftbench sweep (inline)", "bare loop"]
    assert _table_rows(md, "## End to end") == ["peftbench", "Trainer + peft"]
    assert "## How this is measured" in md


def test_perf_json_holds_the_numbers_behind_the_table(perf_run):
    _, out = perf_run
    data = json.loads(out.with_suffix(".json").read_text())
    fixed = {r["method"]: r for r in data["steps"]["fixed"]["rows"]}
    assert set(fixed) == {"floor", *METHODS[1:]}
    for r in fixed.values():
        assert r["cpu_ms"] > 0 and r["wall_ms"] > 0 and math.isfinite(r["x_floor"])
        # Peak memory counts the method's own weights plus what its two steps allocate.
        assert r["peak_bytes"] is not None and r["peak_bytes"] > 0
    # Full fine-tuning holds gradients and two AdamW moments of every weight on top of what LoRA holds.
    assert fixed["full"]["peak_bytes"] > fixed["lora"]["peak_bytes"]
    assert fixed["floor"]["x_floor"] == 1.0
    e2e = data["e2e"]
    assert e2e["harness"]["steps"] == e2e["bare"]["steps"] == e2e["trainer"]["steps"] == 3  # 48 rows / 16
    # Same rows, tokens, batches, seed and model: the bare loop is the harness's computation without the harness.
    assert e2e["bare"]["accuracy"] == pytest.approx(e2e["harness"]["accuracy"])
    assert e2e["padding"]["padded"]["train_tokens"] == e2e["padding"]["grouped"]["train_tokens"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["perf", "--steps", "0"], "--steps must be >= 1"),
        (["perf", "--shapes", "fixed,qqp"], "unknown perf shape 'qqp'"),
        (["perf", "--sections", "steps,speed"], "unknown perf section 'speed'"),
        (["perf", "--methods", "lora,lorra"], "unknown method 'lorra'"),
        (["perf", "--e2e-rows", "0"], "--e2e-rows must be >= 1"),
    ],
)
def test_bad_perf_options_are_usage_errors(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "x.md").exists()


def test_device_mismatch_is_a_usage_error(capsys, tmp_path):
    if torch.cuda.is_available():
        argv, needle = ["perf", "--device", "cpu"], "CUDA_VISIBLE_DEVICES="
    else:
        argv, needle = ["perf", "--device", "cuda"], "no CUDA device"
    assert main([*argv, "--out", str(tmp_path / "x.md")]) == 2
    assert needle in capsys.readouterr().err


# --- the fused layer against the formulas -----------------------------------------------------------------


def _layer(kind: str, d_in: int, d_out: int, r: int, bias: bool):
    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out, bias=bias).double()
    base.requires_grad_(False)
    if bias:
        base.bias.normal_()
    if kind == "lora":
        layer = LoraLinear(base, r, alpha=2.0 * r)
        params = {"lora_A": layer.lora_A, "lora_B": layer.lora_B}
    elif kind == "dora":
        layer = DoraLinear(base, r, alpha=2.0 * r)
        params = {"lora_A": layer.lora_A, "lora_B": layer.lora_B, "magnitude": layer.magnitude}
    else:
        layer = AdaLoraLinear(base, r, alpha=32.0)
        params = {"P": layer.P, "lam": layer.lam, "Q": layer.Q}
    with torch.no_grad():
        for p in params.values():
            p.add_(0.3 * torch.randn_like(p))  # every term non-zero
    return layer, params


def _formula(kind: str, layer, x: torch.Tensor) -> torch.Tensor:
    w, b = layer.base.weight, layer.base.bias
    if kind == "adalora":
        return F.linear(x, w, b) + layer.scaling * ((x @ (layer.Q * layer.lam[:, None]).T) @ layer.P.T)
    h = F.linear(x, w) + layer.scaling * ((x @ layer.lora_A.T) @ layer.lora_B.T)
    if kind == "dora":
        with torch.no_grad():
            n = torch.linalg.norm(w + layer.scaling * layer.lora_B @ layer.lora_A, dim=1)
        h = h * (layer.magnitude / n)
    return h if b is None else h + b


@pytest.mark.parametrize("kind", ["lora", "dora", "adalora"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(32, 32, 4, True), (32, 37, 12, False), (37, 32, 8, True)])
def test_fused_layer_matches_the_formula(kind, train, shape):
    d_in, d_out, r, bias = shape
    layer, params = _layer(kind, d_in, d_out, r, bias)
    layer.train(train)
    x = torch.randn(3, 17, d_in, dtype=torch.float64, requires_grad=True)
    assert lora_mod.can_fuse(x, layer.base.weight, layer.dropout, layer.training)
    grad_out = torch.randn(3, 17, d_out, dtype=torch.float64)
    results = []
    for fn in (lambda: layer(x), lambda: _formula(kind, layer, x)):
        x.grad = None
        for p in params.values():
            p.grad = None
        y = fn()
        y.backward(grad_out)
        results.append((y.detach(), x.grad.clone(), {k: p.grad.clone() for k, p in params.items()}))
    (y1, gx1, g1), (y2, gx2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx1, gx2, rtol=1e-10, atol=1e-10)
    for k in params:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-10, atol=1e-10, msg=k)
    # Training runs the output as a slice of a wider GEMM; it must still view as the model's code views it.
    assert y1.view(3, 17, d_out).shape == (3, 17, d_out)


@pytest.mark.parametrize("kind", ["lora", "dora", "adalora"])
def test_unfused_path_matches_the_fused_one(kind, monkeypatch):
    """Where fusing does not apply (autocast, dropout, tiny inputs), the unfused path gives the same numbers."""
    layer, params = _layer(kind, 32, 37, 8, True)
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    grad_out = torch.randn(2, 40, 37, dtype=torch.float64)
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(lora_mod, "can_fuse", lambda *a: False)
            for mod in ("peftbench.adapters.dora", "peftbench.adapters.adalora.layer"):
                monkeypatch.setattr(f"{mod}.can_fuse", lambda *a: False)
        for p in params.values():
            p.grad = None
        y = layer(x)
        y.backward(grad_out)
        results.append((y.detach(), {k: p.grad.clone() for k, p in params.items()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for k in params:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], rtol=1e-10, atol=1e-10, msg=k)


def test_tiny_inputs_and_trainable_weights_do_not_fuse():
    layer, _ = _layer("lora", 64, 64, 4, True)
    one_token = torch.randn(1, 64, dtype=torch.float64)
    assert not lora_mod.can_fuse(one_token, layer.base.weight, layer.dropout, True)
    many = torch.randn(200, 64, dtype=torch.float64)
    assert lora_mod.can_fuse(many, layer.base.weight, layer.dropout, True)
    layer.base.weight.requires_grad_(True)
    assert not lora_mod.can_fuse(many, layer.base.weight, layer.dropout, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lora_mod.can_fuse(many.float(), layer.base.weight.float(), layer.dropout, True)
