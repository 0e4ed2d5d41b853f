"""`peftbench plot`: figures from run records (the plotting itself lives in plots.py, imported on use).

peftbench plot ranks RECORD --out PATH             AdaLoRA's final rank per matrix, from one record
peftbench plot pareto --task T [--results DIR] --out PATH   primary metric vs adapter parameters
peftbench plot curves --task T [--results DIR] --out PATH   evaluation metric vs training step
"""

from __future__ import annotations

from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.args import names

_OUT_HELP = "output path (PNG; an SVG is written beside it)"


def add_subcommand(sub) -> None:
    p = sub.add_parser("plot", help="figures: ranks (AdaLoRA rank heatmap), pareto (metric vs params), curves")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{ranks,pareto,curves}")

    r = kinds.add_parser("ranks", help="AdaLoRA rank heatmap of one record")
    r.add_argument("record", type=Path, help="a run record JSON")
    r.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
    r.set_defaults(func=cmd_ranks)

    for name, helptext, handler in (
        ("pareto", "primary metric vs adapter parameters, one line per method, full FT as a band", cmd_pareto),
        ("curves", "evaluation metric over training steps per method, mean over seeds", cmd_curves),
    ):
        q = kinds.add_parser(name, help=helptext)
        q.add_argument("--task", required=True)
        q.add_argument(
            "--results",
            type=Path,
            default=Path("results"),
            help="results directory (records in runs/; default: results)",
        )
        q.add_argument("--methods", type=names, default=None, help="only these methods, e.g. lora,dora,full")
        q.add_argument("--profile", default="quick", help="only records made with this training profile")
        q.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
        if name == "curves":
            q.add_argument("--metric", default=None, help="metric from the eval history (default: the primary)")
        q.set_defaults(func=handler)


def _print(written: list[Path]) -> int:
    for w in written:
        print(f"wrote {w}")
    return 0


def cmd_ranks(args) -> int:
    from peftbench.harness.report import plots
    from peftbench.records import load_record

    loaded = load_record(args.record)
    if loaded.record is None:
        raise UsageError(f"cannot read record {args.record}: {loaded.problem}")
    diag = loaded.record.diagnostics
    if not diag.get("final_ranks") and not diag.get("ranks"):
        raise UsageError(f"{args.record} has no rank diagnostics (only AdaLoRA runs have them)")
    return _print(plots.plot_ranks(diag, args.out))


def _check_results(results: Path) -> None:
    from peftbench.records import runs_dir

    if not runs_dir(results).is_dir():
        raise UsageError(f"no run records under {runs_dir(results)}; pass --results DIR of a sweep")


def cmd_pareto(args) -> int:
    from peftbench.harness.report import plots
    from peftbench.harness.report.aggregate import runs_frame

    _check_results(args.results)
    df = runs_frame(args.results)
    if not df.empty:
        df = df[(df["task"] == args.task) & (df["profile"] == args.profile)]
        if args.methods:
            df = df[df["method"].isin(args.methods)]
    if df.empty:
        raise UsageError(f"no records of task {args.task!r} under {args.results}; check --task, --methods, --profile")
    return _print(plots.plot_pareto(df, args.task, args.out))


def cmd_curves(args) -> int:
    from peftbench.harness.report import plots
    from peftbench.records import iter_records

    _check_results(args.results)
    records = [
        r.record
        for r in iter_records(args.results)
        if r.record is not None
        and r.record.config.task == args.task
        and r.record.config.profile == args.profile
        and (not args.methods or r.record.config.method in args.methods)
    ]
    if not records:
        raise UsageError(f"no records of task {args.task!r} under {args.results}; check --task, --methods, --profile")
    return _print(plots.plot_curves(records, args.task, args.out, args.metric))
