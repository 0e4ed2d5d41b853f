"""`peftbench report`: one static HTML page per results directory that answers, per task and budget, "is the
adaptive method (AdaLoRA) helping here, and what did it cost?" against the reference method (LoRA).

peftbench report [--results DIR] [--tasks T,...] [--out DIR]

The page (`index.html`) and its images (`img/*.png`, with SVGs beside them) go to --out (default
DIR/report); the page loads nothing else. Sections per task and budget: verdict, where the rank went, what the
schedule did, failure-mode detectors, cost, leaderboard; then a Pareto plot per task.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.args import names
from peftbench.records import NO_BUDGET

log = logging.getLogger(__name__)

IMG = "img"
# Bytes an importance-scored method keeps per initial adapter parameter while it allocates: an fp32 EMA of
# the sensitivity |θ·∇θ| and one of its uncertainty (AdaLoRA's I-bar and U-bar, one entry per P, λ and Q value).
EMA_BYTES = 2 * 4
ADAM_BYTES = 2 * 4  # Adam's two fp32 moments per trainable parameter, for scale


def add_subcommand(sub) -> None:
    p = sub.add_parser("report", help="one HTML page per sweep: is the adaptive method helping, and at what cost")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (records in runs/)")
    p.add_argument("--tasks", type=names, default=None, help="only these tasks (default: every task in the records)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS/report)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates of the paired tests")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    if args.resamples < 1:
        raise UsageError(f"--resamples must be 1 or more, got {args.resamples}")
    page = build_report(args.results, args.tasks, args.out or Path(args.results) / "report", args.resamples)
    print(f"report: {page.resolve()}")
    return 0


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _figure(paths: list[Path], out: Path, alt: str):
    from peftbench.harness.report.page import Figure

    png = next(p for p in paths if p.suffix == ".png")
    return Figure(png.relative_to(out).as_posix(), alt)


def _reference_rank(ref_arm) -> int | None:
    # The reference's own config says its uniform rank when it has one (LoRA's r); shown, never computed on.
    if ref_arm is None or not ref_arm.records:
        return None
    r = ref_arm.records[0].config.method_config.get("r")
    return r if isinstance(r, int) else None


def _schedule_legend(arm, scale: float, unit: str) -> str:
    from peftbench.harness.report.page_plots import pruning_steps, schedule_marks

    first = arm.records[0]
    d = first.diagnostics
    t_init, t_final = schedule_marks(first)
    total = (d.get("schedule") or {}).get("total_steps") or first.train.total_steps
    parts = [
        f"{arm.label} started at b(0) = {d.get('initial_budget')} and was scheduled down to b(T) = "
        f"{d.get('final_budget')} {d.get('budget_unit', '')} over {total} steps; warm-up ended after step {t_init} "
        f"and the ranks were fixed after step {t_final}."
    ]
    steps = pruning_steps(first)
    if steps:
        parts.append(f"The retained triplet count changed after step(s) {', '.join(map(str, steps[:12]))}"
                     + (" …" if len(steps) > 12 else "") + f" (seed {first.config.seed}).")  # fmt: skip
    else:
        parts.append(f"The retained triplet count never changed in the sampled curve (seed {first.config.seed}).")
    hist = [(h["step"], h.get(first.metrics.primary_name)) for h in first.metrics.history if isinstance(h, dict)]
    hist = [(s, v) for s, v in hist if isinstance(v, (int, float))]
    if len(hist) >= 2:
        parts.append(f"{first.metrics.primary_name} went from {hist[0][1] * scale:.2f} (step {hist[0][0]}) to "
                     f"{hist[-1][1] * scale:.2f}{unit} (step {hist[-1][0]}) in seed {first.config.seed}.")  # fmt: skip
    else:
        parts.append("Only the final evaluation was recorded (run with --set eval_every=N for a curve).")
    orth = [v for r in arm.records for v in [r.diagnostics.get("orth_reg_curve")] if v]
    if orth:
        start, end = _mean(o[0][1] for o in orth), _mean(o[-1][1] for o in orth)
        change = f" ({end / start - 1:+.0%})" if start else ""
        parts.append(f"The orthogonality penalty R went from {start:.3g} to {end:.3g}{change} (mean over seeds); the "
                     f"loss added γR with γ = {d.get('orth_reg_weight')}.")  # fmt: skip
    return " ".join(parts)


def _ema_line(arm) -> str | None:
    peak = _mean(r.params.adapter_peak for r in arm.records if r.params is not None)
    final = _mean(r.params.adapter for r in arm.records if r.params is not None)
    if not peak or not final:
        return None
    total = EMA_BYTES * peak
    return (
        f"{arm.label}'s importance scores keep {EMA_BYTES} bytes (two fp32 EMAs) per initial adapter parameter: "
        f"{total / 2**20:,.2f} MiB for {peak:,.0f} initial parameters, i.e. {total / final:.1f} bytes per retained "
        f"parameter ({total / final / ADAM_BYTES:.1f}x Adam's {ADAM_BYTES} bytes of moments per parameter), until "
        f"the ranks are fixed. Adapter parameters went from {peak:,.0f} (initial) to {final:,.0f} (final)."
    )


def _table(group, spec, baseline, scale: float):
    from peftbench.harness.report.aggregate import count_label
    from peftbench.harness.report.claims import judge_table
    from peftbench.harness.report.compare import primary_split
    from peftbench.harness.report.formats import Cell, Row, Table, html_table
    from peftbench.harness.report.verdict import method_runs

    arms = [a for a in group.arms if a.records]
    runs, refs = [], None
    for a in arms:
        r, got = method_runs(a, primary_split(spec))
        runs.append(r)
        refs = refs or got
    claims = judge_table(spec, runs, refs, baseline) if runs else None
    rows = []
    for a in arms:
        vals = [r.metrics.primary for r in a.records]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        text = f"{mean * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None else "")
        adapter = _mean(r.params.adapter for r in a.records if r.params)
        peak = _mean(r.params.adapter_peak for r in a.records if r.params)
        n = f"{len(a.records)}" + (f" ({len(a.failed)} failed)" if a.failed else "")
        rows.append(Row((
            Cell(a.label), Cell(text, mean, bold=claims.bold(a.method), marks=claims.marks(a.method)), Cell(n),
            Cell(count_label(adapter), adapter), Cell(count_label(peak), peak),
        )))  # fmt: skip
    legend = claims.legend(scale, " points" if scale != 1.0 else "") if claims else ()
    metric = f"{spec.primary_metric} (mean ± std)"
    table = Table(group.title, ("method", metric, "seeds", "adapter params", "initial adapter params"), tuple(rows),
                  legend, claims.mark_defs if claims else ())  # fmt: skip
    return html_table(table)


def _group_view(group, spec, baseline, out: Path, resamples: int):
    from peftbench.harness.report import page, page_plots, plots
    from peftbench.harness.report.aggregate import metric_scale
    from peftbench.harness.report.detectors import detect
    from peftbench.harness.report.ranks import summarize_ranks
    from peftbench.harness.report.verdict import judge

    scale = metric_scale(group.task)
    unit = " points" if scale != 1.0 else ""
    ref = group.reference
    ref_label = ref.label if ref else "reference"
    img = out / IMG
    verdicts = tuple((judge(spec, a, ref, baseline, resamples), a.label, ref.label)
                     for a in group.challengers if ref is not None and a.records)  # fmt: skip
    rank_views, schedules = [], []
    for arm in group.role("adaptive"):
        if not arm.records:
            continue
        summary = summarize_ranks(arm.records)
        if summary is not None:
            first = next(r for r in arm.records if r.diagnostics.get("rank_grid"))
            heat = _figure(plots.plot_ranks(first.diagnostics, img / f"{group.key}-{arm.method}-ranks"), out,
                           f"{arm.label} final rank per matrix")  # fmt: skip
            rank_views.append(page.RankView(arm, summary, heat, _reference_rank(ref), ref_label))
        if arm.records[0].diagnostics.get("budget_curve"):
            paths = page_plots.plot_schedule(arm.records, ref.records if ref else (), (arm.label, ref_label), scale,
                                             img / f"{group.key}-{arm.method}-schedule")  # fmt: skip
            schedules.append(page.ScheduleView(arm, _figure(paths, out, f"{arm.label} schedule"),
                                               _schedule_legend(arm, scale, unit)))  # fmt: skip
    trivial = baseline.primary(spec) if baseline.available else None
    flags = []
    for arm in group.arms:
        others = ref.records if ref is not None and arm is not ref else None
        flags += detect(arm.label, arm.records, arm.failed, others, ref_label, trivial, spec.higher_is_better)
    with_loss = [(a.label, a.records) for a in group.arms if any(r.train.loss_history for r in a.records)]
    loss_fig = None
    if with_loss:
        loss_fig = _figure(page_plots.plot_loss(with_loss, img / f"{group.key}-loss"), out, "training loss")
    cost = tuple(
        page.CostRow(
            a,
            _mean(r.perf.step_time_ms_median for r in a.records if r.perf),
            _mean(r.perf.train_tokens_per_second for r in a.records if r.perf),
            _mean(r.perf.peak_memory_bytes for r in a.records if r.perf),
            next((r.perf.peak_memory_kind for r in a.records if r.perf and r.perf.peak_memory_kind), ""),
            _mean(r.params.adapter for r in a.records if r.params),
            _mean(r.params.adapter_peak for r in a.records if r.params),
        )
        for a in group.arms
        if a.records
    )
    ema = tuple(line for a in group.role("adaptive") if a.records for line in [_ema_line(a)] if line)
    note = f"trivial baseline: {baseline.note or baseline.name}" if baseline.available else baseline.note
    return page.GroupView(group, scale, unit, spec.primary_metric, verdicts, tuple(rank_views), tuple(schedules),
                          tuple(flags), loss_fig, cost, ema, _table(group, spec, baseline, scale), note)  # fmt: skip


def _pareto(results: Path, task: str, profile: str, out: Path):
    from peftbench.harness.report import plots
    from peftbench.harness.report.aggregate import runs_frame

    df = runs_frame(results)
    df = df[(df["task"] == task) & (df["profile"] == profile)]
    try:
        paths = plots.plot_pareto(df, task, out / IMG / f"pareto-{task}-{profile}")
    except UsageError as e:
        return None, f"No Pareto plot: {e}."
    methods = sorted(df["method"].unique())
    budgets = sorted(b for b in df["budget"].unique() if b != NO_BUDGET)
    text = (f"{task} (profile {profile}): primary metric against adapter parameters for {len(methods)} method(s) at "
            f"{len(budgets)} budget(s); error bars are the std over seeds, grey steps the Pareto front.")  # fmt: skip
    return _figure(paths, out, f"{task} Pareto plot"), text


def build_report(results: Path, tasks: list[str] | None, out: Path, resamples: int = 1000) -> Path:
    from peftbench import registry
    from peftbench.harness.report import page
    from peftbench.harness.report.page_groups import baseline_for, load_groups

    groups = load_groups(results, tasks)
    out = Path(out)
    (out / IMG).mkdir(parents=True, exist_ok=True)
    views, baselines = [], {}
    for g in groups:
        spec = registry.tasks.get(g.task)
        if (g.task, g.profile) not in baselines:
            recs = [r for h in groups if (h.task, h.profile) == (g.task, g.profile) for a in h.arms for r in a.records]
            baselines[g.task, g.profile] = baseline_for(spec, recs)
        log.info("report: %s", g.title)
        views.append(_group_view(g, spec, baselines[g.task, g.profile], out, resamples))
    pareto = []
    for task, profile in sorted({(g.task, g.profile) for g in groups}):
        fig, text = _pareto(results, task, profile, out)
        pareto.append((f"{task}-{profile}", fig, text))
    n = sum(len(a.records) + len(a.failed) for g in groups for a in g.arms)
    intro = (f"{len(groups)} task/budget group(s) from the run records under {Path(results)} ({n} record(s) "
             f"counted per group they appear in). Each group answers: does each method help, tie or hurt against "
             f"the reference method at the same budget, where did an adaptive method put its rank, what did its "
             f"schedule do, did anything fail, and what did it cost.")  # fmt: skip
    return page.write(out / "index.html", page.render("peftbench report", intro, views, pareto))
