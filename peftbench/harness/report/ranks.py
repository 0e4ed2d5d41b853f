"""Where an adaptive method's rank went, from the final ranks its records hold (diagnostics `final_ranks`,
`init_ranks` and `rank_grid`: layers x module kinds). Ranks are counted in singular triplets, the unit the
records give per matrix; a triplet of an FFN matrix holds more parameters than one of an attention matrix."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from peftbench.records import RunRecord

log = logging.getLogger(__name__)

TOP_FRACTION = 0.10

# Module kinds by the words their paths use in the common encoder families (BERT/RoBERTa, DeBERTa, LLaMA-style
# projections, DistilBERT); attention output is tested before FFN output, whose BERT path it contains.
_KIND_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("query", ("query", "q_proj", "q_lin", "query_proj")),
    ("key", ("key", "k_proj", "k_lin", "key_proj")),
    ("value", ("value", "v_proj", "v_lin", "value_proj")),
    ("attention-output", ("attention.output", "o_proj", "out_proj", "out_lin")),
    ("FFN-in", ("intermediate", "up_proj", "gate_proj", "fc1", "lin1")),
    ("FFN-out", ("output.dense", "down_proj", "fc2", "lin2", "output")),
)


def kind_category(kind: str) -> str:
    """'attention.self.query' -> 'query', 'intermediate.dense' -> 'FFN-in'; unknown kinds stay as they are."""
    low = kind.lower()
    for category, words in _KIND_WORDS:
        if any(w in low for w in words):
            return category
    return kind


@dataclass(frozen=True)
class KindRank:
    category: str
    final: float  # summed over layers, mean over seeds
    initial: float
    zero_layers: int  # layers where this kind ended at rank 0 in every seed


@dataclass(frozen=True)
class RankSummary:
    seeds: tuple[int, ...]
    n_matrices: int
    final_total: float  # retained triplets, mean over seeds
    initial_total: float
    top_k: int  # how many matrices the top fraction is
    top_share: float  # share of the retained triplets held by the top_k matrices, mean over seeds
    zero_matrices: dict[str, int]  # matrix -> number of seeds in which it ended at rank 0
    empty_layers: dict[int, int]  # layer -> seeds in which every adapted matrix of it ended at rank 0
    by_kind: tuple[KindRank, ...]
    stability: float | None  # mean pairwise Spearman correlation of per-matrix final ranks over seeds
    stability_pairs: int


def has_ranks(record: RunRecord) -> bool:
    return bool(record.diagnostics.get("final_ranks"))


def top_share(ranks: Sequence[int], fraction: float = TOP_FRACTION) -> tuple[int, float]:
    """(k, share): the k = ceil(fraction x n) highest-ranked matrices and the share of the total rank they hold."""
    values = sorted((int(r) for r in ranks), reverse=True)
    k = max(1, math.ceil(fraction * len(values)))
    total = sum(values)
    return k, (sum(values[:k]) / total if total else math.nan)


def stability(rank_maps: Sequence[dict[str, int]]) -> tuple[float | None, int]:
    """Mean pairwise Spearman correlation of the per-matrix ranks of each pair of seeds (over the matrices they
    share); pairs where either seed has one rank everywhere (no order to correlate) are left out."""
    from scipy.stats import spearmanr

    values = []
    for a, b in itertools.combinations(rank_maps, 2):
        names = sorted(set(a) & set(b))
        x, y = [a[n] for n in names], [b[n] for n in names]
        if len(names) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
            continue
        values.append(float(spearmanr(x, y).statistic))
    return (float(np.mean(values)) if values else None), len(values)


def summarize_ranks(records: Sequence[RunRecord]) -> RankSummary | None:
    """The rank facts of one method's seeds; None when no record holds final ranks."""
    recs = [r for r in records if has_ranks(r)]
    if not recs:
        return None
    finals = [{k: int(v) for k, v in r.diagnostics["final_ranks"].items()} for r in recs]
    inits = [{k: int(v) for k, v in (r.diagnostics.get("init_ranks") or {}).items()} for r in recs]
    shares, zero, empty = [], {}, {}
    kind_final: dict[str, list[float]] = {}
    kind_init: dict[str, list[float]] = {}
    kind_zero: dict[str, dict[int, int]] = {}
    for rec, final, init in zip(recs, finals, inits, strict=True):
        k, share = top_share(list(final.values()))
        shares.append(share)
        for name, rank in final.items():
            if rank == 0:
                zero[name] = zero.get(name, 0) + 1
        grid = rec.diagnostics.get("rank_grid") or {}
        layers, kinds, cells = grid.get("layers") or [], grid.get("kinds") or [], grid.get("ranks") or []
        per_kind_final: dict[str, float] = {}
        for li, layer in enumerate(layers):
            row = [c for c in cells[li] if c is not None]
            if row and all(c == 0 for c in row):
                empty[layer] = empty.get(layer, 0) + 1
            for ki, kind in enumerate(kinds):
                c = cells[li][ki]
                if c is None:
                    continue
                cat = kind_category(kind)
                per_kind_final[cat] = per_kind_final.get(cat, 0) + c
                if c == 0:
                    kind_zero.setdefault(cat, {}).setdefault(layer, 0)
                    kind_zero[cat][layer] += 1
        for cat, v in per_kind_final.items():
            kind_final.setdefault(cat, []).append(v)
        per_kind_init: dict[str, float] = {}
        for name, r0 in init.items():
            cat = _category_of(name, kinds)
            per_kind_init[cat] = per_kind_init.get(cat, 0) + r0
        for cat, v in per_kind_init.items():
            kind_init.setdefault(cat, []).append(v)
    n = len(recs)
    by_kind = tuple(
        KindRank(
            cat,
            float(np.mean(vals)),
            float(np.mean(kind_init.get(cat, [math.nan]))),
            sum(1 for seeds in kind_zero.get(cat, {}).values() if seeds == n),
        )
        for cat, vals in kind_final.items()
    )
    stab, pairs = stability(finals)
    return RankSummary(
        seeds=tuple(r.config.seed for r in recs),
        n_matrices=len(finals[0]),
        final_total=float(np.mean([sum(f.values()) for f in finals])),
        initial_total=float(np.mean([sum(i.values()) for i in inits])) if all(inits) else math.nan,
        top_k=top_share(list(finals[0].values()))[0],
        top_share=float(np.nanmean(shares)) if not all(math.isnan(s) for s in shares) else math.nan,
        zero_matrices=dict(sorted(zero.items())),
        empty_layers=dict(sorted(empty.items())),
        by_kind=by_kind,
        stability=stab,
        stability_pairs=pairs,
    )


def _category_of(name: str, kinds: Sequence[str]) -> str:
    # The grid's kinds are suffixes of the matrix paths; the longest that matches names the kind.
    matches = [k for k in kinds if name.endswith(k)]
    return kind_category(max(matches, key=len) if matches else name)


def collapsed_kinds(record: RunRecord) -> list[str]:
    """Module kinds at rank 0 in every layer that adapts them (the method gave up on a whole module type)."""
    grid = record.diagnostics.get("rank_grid") or {}
    kinds, cells = grid.get("kinds") or [], grid.get("ranks") or []
    out = []
    for ki, kind in enumerate(kinds):
        column = [row[ki] for row in cells if row[ki] is not None]
        if column and all(c == 0 for c in column):
            out.append(kind_category(kind))
    return out
