"""Native methods against the same methods through the peft backend, from committed run records: accuracy mean ±
std (n) of each, whether the two are separated (the leaderboard's honest-tables test: seeds and examples), and
the peft/native ratios of the median step time and of peak memory. Usage:

    python scripts/native_vs_peft.py results/leaderboards/native-vs-peft > side-by-side.md
"""

from __future__ import annotations

import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from peftbench import registry
from peftbench.harness.report.evidence import RowRuns, load_table
from peftbench.harness.report.significance import top_group
from peftbench.harness.run.precision import cpu_model
from peftbench.records import iter_records

PAIRS = (("lora", "peft-lora"), ("dora", "peft-dora"), ("adalora", "peft-adalora"))


def _pm(xs: list[float], scale: float) -> str:
    sd = statistics.stdev(xs) * scale if len(xs) > 1 else float("nan")
    return f"{statistics.fmean(xs) * scale:.2f} ± {sd:.2f} ({len(xs)})"


def main(results: Path) -> str:
    recs: dict[tuple[str, str], list] = defaultdict(list)
    for loaded in iter_records(results):
        rec = loaded.record
        if rec is not None and rec.ok:
            recs[(rec.config.task, rec.config.method)].append(rec)
    tasks = sorted({t for t, _ in recs})
    first = next(iter(recs.values()))[0]
    lines = [
        "# Native vs peft, same budget, same runs",
        "",
        f"- machine: {cpu_model()} ({platform.machine()}); precision {first.config.train.precision}, profile "
        f"{first.config.profile}, budget {first.config.budget}; records in `runs/` beside this file",
        "- tie: the leaderboard's test (the better mean against the other: a paired t-test over seeds and a paired "
        "bootstrap over evaluation examples must both reject at α = 0.05 to separate them)",
        "- step time and peak memory: peft's median optimizer-step time and process peak RSS over native's, same "
        "machine; a native record reused from an earlier sweep ran under other load, so read the step-time ratio "
        "with the README beside this file",
        "",
        "| task | method | native | peft | separated? | step time peft/native | peak memory peft/native |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for task in tasks:
        spec = registry.tasks.get(task)
        for native, peft in PAIRS:
            a, b = recs.get((task, native)), recs.get((task, peft))
            if not a or not b:
                continue
            rows = [RowRuns(m, tuple((r.config.seed, r.metrics.primary, str(r.path)) for r in rs))
                    for m, rs in ((native, a), (peft, b))]  # fmt: skip
            ev = load_table(spec, rows)
            group = top_group(spec, ev.runs, ev.references) if ev.references is not None else None
            separated = "no (tie)" if group is None or len(group.members) == 2 else f"yes: {group.best} better"
            step = statistics.median(r.perf.step_time_ms_median for r in b) / statistics.median(
                r.perf.step_time_ms_median for r in a
            )
            mem = statistics.median(r.perf.peak_memory_bytes for r in b) / statistics.median(
                r.perf.peak_memory_bytes for r in a
            )
            scale = spec.metric_scale
            lines.append(
                f"| {task} | {native} | {_pm([r.metrics.primary for r in a], scale)} | "
                f"{_pm([r.metrics.primary for r in b], scale)} | {separated} | {step:.2f} | {mem:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
