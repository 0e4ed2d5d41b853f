"""Figures for run records and leaderboards. Each function writes a PNG and an SVG and returns their paths."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

# A library module must not need a display: render off-screen whatever backend the user configured.
matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from peftbench.errors import UsageError  # noqa: E402

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg")


def _out_paths(out: str | Path) -> list[Path]:
    """`out` names the figure without suffix (a .png/.svg suffix is dropped); parents are created."""
    out = Path(out)
    if out.suffix.lower() in {"." + f for f in FORMATS}:
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    return [out.with_name(f"{out.name}.{fmt}") for fmt in FORMATS]


def _save(fig: Figure, out: str | Path) -> list[Path]:
    paths = _out_paths(out)
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def _short_kind(kind: str) -> str:
    """'attention.self.query' -> 'attention.query', 'intermediate.dense' -> 'intermediate'."""
    parts = [p for p in kind.split(".") if p not in {"self", "dense"}]
    return ".".join(parts) or kind


def plot_ranks(diagnostics: dict, out: str | Path) -> list[Path]:
    """Heatmap of AdaLoRA's final rank per adapted matrix, module kinds x layers as in the paper's figure,
    each cell annotated with its rank; the colour scale runs from 0 to the largest initial rank."""
    grid = diagnostics.get("rank_grid")
    if not grid or not grid.get("layers") or not grid.get("kinds"):
        raise UsageError("plot_ranks needs AdaLoRA diagnostics with a non-empty 'rank_grid' (a finished adalora run)")
    layers, kinds = grid["layers"], grid["kinds"]
    # Rows are module kinds, columns layers; NaN marks a kind not adapted in a layer.
    data = np.array(
        [[math.nan if grid["ranks"][li][ki] is None else grid["ranks"][li][ki] for li in range(len(layers))]
         for ki in range(len(kinds))],
        dtype=float,
    )  # fmt: skip
    init_ranks = diagnostics.get("init_ranks") or {}
    vmax = max(init_ranks.values()) if init_ranks else np.nanmax(data)
    vmax = max(float(vmax), 1.0)

    fig = Figure(figsize=(max(4.0, 0.55 * len(layers) + 2.5), max(2.5, 0.45 * len(kinds) + 1.4)))
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap="YlGnBu", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
    for ki in range(len(kinds)):
        for li in range(len(layers)):
            value = data[ki, li]
            if math.isnan(value):
                continue
            # Dark text on light cells, light text on dark ones, so every number stays readable.
            colour = "white" if value > 0.6 * vmax else "black"
            ax.text(li, ki, f"{int(value)}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(len(layers)), labels=[str(layer) for layer in layers])
    ax.set_yticks(range(len(kinds)), labels=[_short_kind(k) for k in kinds])
    ax.set_xlabel("layer")
    total = diagnostics.get("final_triplets")
    unit_note = f" ({total} triplets kept)" if total is not None else ""
    ax.set_title(f"AdaLoRA final rank per matrix{unit_note}", fontsize=10)
    fig.colorbar(im, ax=ax, label="final rank", ticks=MaxNLocator(integer=True))
    return _save(fig, out)
