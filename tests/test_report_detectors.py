"""The report's failure-mode detectors and rank facts on constructed records: each failure is flagged with its
evidence, and a healthy run is not."""

from __future__ import annotations

import math

import pytest
from helpers import build_record

from peftbench.harness.report import detectors as det
from peftbench.harness.report.ranks import collapsed_kinds, kind_category, stability, summarize_ranks, top_share
from peftbench.records import Params

KINDS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "intermediate.dense", "output.dense"]  # fmt: skip


def loss_curve(steps: int, drop_at: int, start: float = 0.7, end: float = 0.3) -> list[list[float]]:
    """Flat at `start` until step `drop_at`, then at `end`: the 90% point is crossed right after drop_at."""
    return [[s, start if s < drop_at else end, 0.0] for s in range(steps)]


def diag(grid: list[list[int]], init: int = 4) -> dict:
    final = {f"bert.encoder.layer.{li}.{k}": r for li, row in enumerate(grid) for k, r in zip(KINDS, row, strict=True)}
    return {
        "final_ranks": final,
        "init_ranks": dict.fromkeys(final, init),
        "rank_grid": {"layers": list(range(len(grid))), "kinds": KINDS, "ranks": grid},
        "budget_curve": [[0, 48], [9, 30]],
    }


HEALTHY_GRID = [[1, 4, 3, 3, 2, 3], [3, 4, 3, 3, 1, 1]]
FFN_IN_GONE = [[1, 4, 3, 3, 0, 3], [3, 4, 3, 3, 0, 1]]


def rec(method: str, seed: int, primary: float = 0.8, **kw):
    return build_record("sst2", method, seed, primary, budget="2K", requested=2000, **kw)


def test_steps_to_drop_counts_steps_taken_and_ignores_one_easy_batch():
    assert (
        det.steps_to_drop(loss_curve(60, 20)) == 21
    )  # the 21st step (index 20) pulls the 3-point trailing mean below 0.63
    spiky = [[s, 0.7, 0.0] for s in range(30)]
    spiky[5][1] = 0.55  # one easy batch: the trailing mean dips only to 0.65
    assert det.steps_to_drop(spiky) is None
    assert det.steps_to_drop([[0, 0.7, 0.0]]) is None


def test_slow_start_is_flagged_and_a_matching_start_is_not():
    lora = [rec("lora", s, loss=loss_curve(100, 10)) for s in (0, 1)]
    slow = [rec("adalora", s, loss=loss_curve(100, 40)) for s in (0, 1)]
    flag = det.slow_start("AdaLoRA", slow, lora, "LoRA")
    assert flag.fired is True and "median 41" in flag.evidence and "median 11" in flag.evidence
    same = [rec("adalora", s, loss=loss_curve(100, 12)) for s in (0, 1)]
    assert det.slow_start("AdaLoRA", same, lora, "LoRA").fired is False
    never = [rec("adalora", 0, loss=[[s, 0.7, 0.0] for s in range(100)]), same[1]]
    flag = det.slow_start("AdaLoRA", never, lora, "LoRA")
    assert flag.fired is True and "never reached in seed(s) 0" in flag.evidence


def test_rank_collapse_flags_a_module_type_at_zero_in_every_layer():
    flag = det.rank_collapse("AdaLoRA", [rec("adalora", 0, diagnostics=diag(FFN_IN_GONE))])
    assert flag.fired is True and "FFN-in" in flag.evidence
    assert collapsed_kinds(rec("adalora", 0, diagnostics=diag(FFN_IN_GONE))) == ["FFN-in"]
    # Zero in one layer only is pruning, not collapse.
    assert det.rank_collapse("AdaLoRA", [rec("adalora", 0, diagnostics=diag(HEALTHY_GRID))]).fired is False
    assert det.rank_collapse("LoRA", [rec("lora", 0)]).fired is None


def test_a_failed_seed_and_a_seed_at_the_majority_baseline_are_flagged():
    failed = [build_record("sst2", "adalora", 2, None, budget="2K", status="failed")]
    ok = [rec("adalora", 0, 0.81), rec("adalora", 1, 0.56)]
    flag = det.bad_seeds("AdaLoRA", ok, failed, trivial=0.5625)
    assert flag.fired is True
    assert "seed 2 failed: boom" in flag.evidence and "seed 1: accuracy 0.56" in flag.evidence
    assert "seed 0" not in flag.evidence
    assert det.bad_seeds("AdaLoRA", ok[:1], [], trivial=0.5625).fired is False
    assert det.bad_seeds("AdaLoRA", ok[:1], [], trivial=None).fired is None


def test_budget_off_target_and_seed_spread():
    off = [rec("lora", 0, params=Params(trainable=2500, adapter=2364, head=66, total=10**6))]
    flag = det.budget_off("LoRA", off)
    assert flag.fired is True and "+18.2%" in flag.evidence
    near = [rec("adalora", 0, params=Params(trainable=2100, adapter=1980, head=66, total=10**6))]
    assert det.budget_off("AdaLoRA", near).fired is False
    lora = [rec("lora", s, p) for s, p in ((0, 0.80), (1, 0.81), (2, 0.80))]
    wide = [rec("adalora", s, p) for s, p in ((0, 0.70), (1, 0.85), (2, 0.80))]
    assert det.seed_spread("AdaLoRA", wide, lora, "LoRA").fired is True
    assert det.seed_spread("AdaLoRA", lora, lora, "LoRA").fired is False
    assert det.seed_spread("AdaLoRA", wide[:1], lora, "LoRA").fired is None


def test_a_healthy_run_raises_no_flag():
    lora = [rec("lora", s, 0.80 + s / 100, loss=loss_curve(100, 10)) for s in range(3)]
    ada = [rec("adalora", s, 0.81 + s / 100, loss=loss_curve(100, 11), diagnostics=diag(HEALTHY_GRID),
               params=Params(trainable=2100, adapter=1990, head=66, total=10**6, adapter_peak=3200))
           for s in range(3)]  # fmt: skip
    flags = det.detect("AdaLoRA", ada, [], lora, "LoRA", trivial=0.5625)
    assert {f.detector for f in flags} == {det.SLOW_START, det.RANK_COLLAPSE, det.BUDGET_OFF, det.BAD_SEED,
                                           det.SEED_SPREAD}  # fmt: skip
    assert [f for f in flags if f.fired] == [], flags
    assert all(f.fired is False for f in flags)


def test_rank_facts():
    assert kind_category("attention.output.dense") == "attention-output"
    assert kind_category("output.dense") == "FFN-out"
    assert kind_category("mlp.down_proj") == "FFN-out"
    k, share = top_share([10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5])
    assert k == 2 and share == 1.0
    assert stability([{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}]) == (pytest.approx(1.0), 1)
    assert stability([{"a": 1, "b": 1}, {"a": 1, "b": 2}]) == (None, 0)
    s = summarize_ranks([rec("adalora", 0, diagnostics=diag(FFN_IN_GONE)),
                         rec("adalora", 1, diagnostics=diag(HEALTHY_GRID))])  # fmt: skip
    assert s.n_matrices == 12 and s.initial_total == 48
    assert s.zero_matrices == {
        "bert.encoder.layer.0.intermediate.dense": 1,
        "bert.encoder.layer.1.intermediate.dense": 1,
    }
    ffn_in = next(k for k in s.by_kind if k.category == "FFN-in")
    assert ffn_in.final == 1.5 and ffn_in.initial == 8 and ffn_in.zero_layers == 0  # zero in 1 of 2 seeds
    assert s.empty_layers == {}
    assert s.stability is not None and not math.isnan(s.stability)
