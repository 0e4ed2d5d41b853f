"""`peftbench plot`: figures from run records (the plotting itself lives in plots.py, imported on use)."""

from __future__ import annotations

from pathlib import Path

from peftbench.errors import UsageError


def add_subcommand(sub) -> None:
    p = sub.add_parser("plot", help="figures: ranks (AdaLoRA rank heatmap of one record)")
    p.add_argument("kind", choices=["ranks"])
    p.add_argument("record", type=Path, help="a run record JSON")
    p.add_argument("--out", type=Path, required=True, help="output path (PNG; an SVG is written beside it)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    import json

    from peftbench.harness import plots

    try:
        data = json.loads(args.record.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read record {args.record}: {e}") from None
    diag = data.get("diagnostics") or {}
    if args.kind == "ranks":
        if not diag.get("final_ranks") and not diag.get("ranks"):
            raise UsageError(f"{args.record} has no rank diagnostics (only AdaLoRA runs have them)")
        written = plots.plot_ranks(diag, args.out)
    for w in written:
        print(f"wrote {w}")
    return 0
