"""The rank heatmap, rendered from the diagnostics of a tiny real AdaLoRA training run."""

from __future__ import annotations

import struct

import torch
from transformers import BertConfig, BertForSequenceClassification

from peftbench.adapters.adalora import AdaLoraAdapter, AdaLoraConfig
from peftbench.adapters.base import ApplyPlan
from peftbench.harness.report.plots import plot_ranks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_run_diagnostics(total_steps: int = 16) -> dict:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
        num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    adapter = AdaLoraAdapter(AdaLoraConfig(init_r=4, target_r=2, t_init=2, t_final=4, delta_t=2))
    adapter.apply(model, ApplyPlan(total_steps=total_steps, targets=("query", "key", "value", "dense")))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(total_steps):
        ids, labels = torch.randint(0, 100, (4, 8)), torch.randint(0, 2, (4,))
        loss = model(input_ids=ids, labels=labels).loss + adapter.extra_loss(model)
        loss.backward()
        opt.step()
        adapter.on_step_end(model, step)
        opt.zero_grad(set_to_none=True)
    return adapter.diagnostics()


def test_plot_ranks_writes_png_and_svg(tmp_path):
    diag = tiny_run_diagnostics()
    grid = diag["rank_grid"]
    assert grid["layers"] == [0, 1, 2] and len(grid["kinds"]) == 6  # q, k, v, attn-out, intermediate, output
    assert sum(diag["final_ranks"].values()) == 2 * 18

    paths = plot_ranks(diag, tmp_path / "figs" / "ranks.png")
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    png, svg = (next(p for p in paths if p.suffix == s) for s in (".png", ".svg"))
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200
    assert len(data) > 10_000  # an annotated heatmap, not an empty canvas
    text = svg.read_text()
    assert "<svg" in text and len(text) > 10_000
