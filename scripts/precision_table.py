"""bf16 vs fp32 on one machine, from committed run records: mean ± std (n) of the primary metric per method, the
difference against 2 standard errors, and the wall and CPU training times. Usage:

    python scripts/precision_table.py results/perf/precision > results/perf/precision.md
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from peftbench.harness.run.precision import cpu_model
from peftbench.records import iter_records


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def main(results: Path) -> str:
    runs: dict[tuple[str, str], list] = defaultdict(list)
    for loaded in iter_records(results):
        rec = loaded.record
        if rec is not None and rec.ok:
            runs[(rec.config.method, rec.config.train.precision)].append(rec)
    methods = sorted({m for m, _ in runs})
    first = next(iter(runs.values()))[0]
    lines = [
        "# Precision parity: bf16 vs fp32 on one machine",
        "",
        f"- machine: {cpu_model()} ({platform.machine()}), torch threads per run {first.env.get('torch_threads')}",
        f"- runs: {first.config.task}, profile {first.config.profile}, budget {first.config.budget or '-'} "
        "(full FT unbudgeted), seeds as listed; records in `results/perf/precision/runs/`",
        "- command: `peftbench sweep --tasks sst2 --methods full,lora,adalora,dora --budgets 0.3M --seeds 0,1,2 "
        "--set precision=P --results results/perf/precision --jobs 2` for P = fp32 and bf16, then "
        "`python scripts/precision_table.py results/perf/precision`",
        "- agree: |mean bf16 - mean fp32| <= 2 SE, SE = sqrt(sd_bf16^2/n + sd_fp32^2/n)",
        "",
        "| method | fp32 acc % (n) | bf16 acc % (n) | diff | 2 SE | agree | train s fp32 | train s bf16 "
        "| CPU s fp32 | CPU s bf16 | speed-up (train wall) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        a, b = runs.get((m, "fp32"), []), runs.get((m, "bf16"), [])
        if not a or not b:
            continue
        (ma, sa), (mb, sb) = (_mean_sd([r.metrics.primary * 100 for r in x]) for x in (a, b))
        se = math.sqrt((sa**2 if sa == sa else 0) / len(a) + (sb**2 if sb == sb else 0) / len(b))
        ta = statistics.fmean(r.perf.train_seconds for r in a)
        tb = statistics.fmean(r.perf.train_seconds for r in b)
        ca = statistics.fmean(r.perf.train_cpu_seconds for r in a)
        cb = statistics.fmean(r.perf.train_cpu_seconds for r in b)
        agree = "yes" if abs(mb - ma) <= 2 * se else "**no**"
        lines.append(
            f"| {m} | {ma:.2f} ± {sa:.2f} ({len(a)}) | {mb:.2f} ± {sb:.2f} ({len(b)}) | {mb - ma:+.2f} | "
            f"{2 * se:.2f} | {agree} | {ta:.1f} | {tb:.1f} | {ca:.1f} | {cb:.1f} | {ta / tb:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/perf/precision")))
