"""Learning curves from run records that evaluated every N steps (`--set eval_every=N`): for each record, the
primary metric after each evaluation, the training CPU minutes spent by then (the run's training CPU time x step /
total steps: on one thread, wall time on an idle core; CPU time does not grow when other jobs share the machine), and
the best constant predictor on the same rows (the majority label of the evaluated rows for classification,
abstaining for SQuAD v2.0), so a reader sees after how many steps and minutes a run leaves the baseline.
Usage:

    python scripts/learning_curve.py results/curves > results/leaderboards/standard/curves.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftbench import registry
from peftbench.harness.report.baselines import trivial_baseline
from peftbench.records import iter_records


def _references(record_file: Path) -> list | None:
    preds = record_file.with_suffix(".preds.jsonl")
    if not preds.is_file():
        return None
    first = json.loads(preds.read_text(encoding="utf-8").splitlines()[0])
    return first.get("references")


def _baseline(task, refs: list | None) -> str:
    if not refs:
        return "-"
    if task.head == "span" and not getattr(task, "version_2_with_negative", False):
        return "- (every question has an answer)"
    # The references as 'training labels': the best constant prediction on these very rows, a stricter bar
    # than the majority of the training rows.
    base = trivial_baseline(task, refs if task.head != "span" else [], refs)
    value = base.primary(task)
    return "-" if value is None else f"{value:.4f}"


def main(results: Path) -> str:
    out = ["# Learning curves", ""]
    for loaded in sorted(iter_records(results), key=lambda r: str(r.path)):
        rec = loaded.record
        if rec is None or not rec.ok or len(rec.metrics.history) < 2:
            continue
        c = rec.config
        task = registry.tasks.get(c.task)
        total = rec.train.total_steps or max(h["step"] for h in rec.metrics.history)
        minutes = (rec.perf.train_cpu_seconds / 60) if rec.perf else None
        budget = f" @{c.budget}" if c.budget else ""
        out += [
            f"## {c.task} / {c.method}{budget}, seed {c.seed}",
            "",
            f"- lr {c.method_config.get('lr') or c.train.lr}, {rec.data.train_rows} training rows, batch "
            f"{c.train.batch_size}, {total} steps, {minutes:.1f} training CPU minutes; evaluated on "
            f"{', '.join(f'{k} ({v} rows)' for k, v in rec.data.eval_rows_per_split.items())}",
            f"- best constant predictor on those rows: {_baseline(task, _references(loaded.path))}",
            "",
            f"| step | training CPU minutes | {rec.metrics.primary_name} |",
            "|---:|---:|---:|",
        ]
        for h in rec.metrics.history:
            m = f"{minutes * h['step'] / total:.1f}" if minutes is not None else "-"
            out.append(f"| {h['step']} | {m} | {h[rec.metrics.primary_name]:.4f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/curves")))
