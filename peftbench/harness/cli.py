"""The `peftbench` command. Logging is configured here and nowhere else; user errors exit 2 on one line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
from pathlib import Path

from peftbench import __version__
from peftbench.errors import RunFailed, UsageError
from peftbench.harness.args import DefaultsFormatter, add_set_option, int_list, names

log = logging.getLogger("peftbench")

# Harness modules that contribute a subcommand through `add_subcommand(subparsers)`, which must set
# `func=handler` on its parser; the handler takes the parsed args and returns an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "peftbench.harness.report.compare",
    "peftbench.harness.report.plot_cmd",
    "peftbench.harness.report.report_cmd",
    "peftbench.harness.regress.gate",
    "peftbench.harness.perf.cli",
    "peftbench.harness.tune.cmd",
)


SAVE_ADAPTER_HELP = (
    "also save the trained adapter and head beside the record: lora, dora and adalora in peft's format "
    "(<hash>.adapter/, for PeftModel.from_pretrained on the same base model), other methods as "
    "<hash>.adapter.safetensors (peftbench's own layout)"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm-l6", help="alias (minilm-l6), local model directory or hub id")
    p.add_argument("--data", default="sample", help="sample (bundled, offline), hub, or a directory of JSONL files")
    p.add_argument("--profile", default="quick", help="training preset: quick, standard, regress")
    add_set_option(p, "override a method or train setting (repeatable), e.g. --set r=16 --set lr=5e-4")
    p.add_argument("--results", default="results", type=Path, help="results directory (records go to runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--log-to",
        type=names,
        default=(),
        metavar="TRACKER",
        help="also stream training curves to this tracker: tensorboard (events beside each record, in "
        "<hash>.tensorboard/; needs pip install 'peftbench[tensorboard]')",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (the first GPU, else the CPU) | cpu | cuda | cuda:N; with --jobs N and several GPUs, one each",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftbench", description="Benchmark PEFT methods at fixed budgets.", formatter_class=DefaultsFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="methods and tasks in the registry")
    p.add_argument(
        "--settings", metavar="METHOD", default=None, help="the --set keys of METHOD and of training, with types, "
        "defaults and help",
    )  # fmt: skip

    p = sub.add_parser("run", help="train and evaluate one configuration")
    p.add_argument("--task", help="a task name (peftbench list)")
    p.add_argument("--method", help="a method name (peftbench list)")
    p.add_argument("--seed", type=int, default=0, help="random seed (data order, initialisation)")
    p.add_argument(
        "--budget", default=None, help="adapter parameter budget: 0.3M, 150K, 0.5%% (none: the method's defaults)"
    )
    p.add_argument("--resolved", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--save-adapter",
        action="store_true",
        help=SAVE_ADAPTER_HELP,
    )
    _common(p)

    p = sub.add_parser("sweep", help="run a grid of tasks x methods x budgets x seeds, then print the leaderboard")
    p.add_argument("--tasks", type=names, required=True, help="comma-separated task names")
    p.add_argument("--methods", type=names, required=True, help="comma-separated method names")
    p.add_argument("--budgets", type=names, default=(), help="e.g. 0.3M,1.2M,0.5%% (none: each method's defaults)")
    p.add_argument("--seeds", type=int_list, default=(0,), help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (local executor)")
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "inline", "ray"],
        help="local: one process per run; inline: in this process; ray: tasks on a Ray cluster",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each Ray task asks for")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--save-adapter", action="store_true", help=SAVE_ADAPTER_HELP + " (runs this sweep trains)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not print the leaderboard at the end")
    _common(p)

    p = sub.add_parser("leaderboard", help="aggregate run records into tables")
    p.add_argument("--results", default="results", type=Path, help="results directory (records in runs/)")
    p.add_argument("--format", default="md", choices=["md", "csv", "latex", "html"], help="table format")
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of printing")
    p.add_argument("--tasks", type=names, default=None, help="only these tasks (comma-separated)")
    p.add_argument("--methods", type=names, default=None, help="only these methods (comma-separated)")
    p.add_argument("--profiles", type=names, default=None, help="only records made with these profiles")

    for module in SUBCOMMAND_MODULES:
        # Each module adds its own subcommand (parser + handler); its top level must import only light modules.
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_subcommand(sub)
    for p in sub.choices.values():  # every subcommand's --help shows its defaults, plugins' included
        p.formatter_class = DefaultsFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("datasets", "transformers", "accelerate", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        handler = getattr(args, "func", None) or COMMANDS[args.command]
        return handler(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_list(args) -> int:
    from peftbench import registry

    if args.settings:
        from peftbench.harness.settings import settings_text

        print(settings_text(args.settings))
        return 0
    print("methods:")
    found, missing = registry.adapters.loadable()
    width = max(10, *map(len, found))
    for name, cls in found.items():
        doc = (cls.summary or sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip()
        print(f"  {name:{width}s} {doc.splitlines()[0] if doc else ''}")
    # Methods whose optional dependency is missing: one line per reason, saying how to get them.
    for why in dict.fromkeys(missing.values()):
        names = [n for n, w in missing.items() if w == why]
        print(f"  ({', '.join(names) if len(names) < 4 else f'{len(names)} more methods'}: {why})")
    print("tasks:")
    for name in registry.tasks.names():
        t = registry.tasks.get(name)
        print(f"  {name:10s} {t.family:6s} primary={t.primary_metric:22s} {t.description}")
    return 0


def _log_to(args) -> tuple[str, ...]:
    return tuple(args.log_to or ())


def cmd_run(args) -> int:
    from peftbench.harness import api
    from peftbench.harness.run.plan import RunRequest

    if args.resolved:
        # A sweep's child: the config was checked when the sweep planned it, and the sweep holds its lock.
        from peftbench.harness.run.devices import parse_device, refuse_multiprocess
        from peftbench.harness.run.plan import load_resolved

        refuse_multiprocess()
        parse_device(args.device)
        cfg = load_resolved(args.resolved)
    else:
        if not args.task or not args.method:
            raise UsageError("run needs --task and --method (see `peftbench list`)")
        cfg = api.prepare_run(
            RunRequest(
                task=args.task,
                method=args.method,
                seed=args.seed,
                model=args.model,
                data=args.data,
                budget=args.budget,
                sets=tuple(args.sets),
                profile=args.profile,
                device=args.device,
            ),
            _log_to(args),
        )
    rec = api.execute_run(
        cfg,
        args.results,
        locked_by_caller=bool(args.resolved),
        progress=not args.quiet and sys.stderr.isatty(),
        save_adapter=args.save_adapter,
        device=args.device,
        log_to=_log_to(args),
    )
    m, p = rec.metrics, rec.params
    print(
        f"{cfg.task}/{cfg.method} seed {cfg.seed}: {m.primary_name} = {m.primary:.4f}; "
        f"adapter params {p.adapter:,}, trainable {p.trainable:,}; "
        f"{rec.perf.train_seconds:.1f} s; record {rec.path}"
        + (f"; weights {rec.adapter_file}" if rec.adapter_file else "")
    )
    return 0


def cmd_sweep(args) -> int:
    from peftbench.harness import api
    from peftbench.records import load_record

    planned = api.prepare_sweep(
        args.tasks,
        args.methods,
        args.budgets,
        args.seeds,
        results=args.results,
        jobs=args.jobs,
        log_to=_log_to(args),
        model=args.model,
        data=args.data,
        sets=tuple(args.sets),
        profile=args.profile,
        device=args.device,
    )
    if args.dry_run:
        print(_plan_table(planned))
        return 0
    # `kill <pid>` ends the sweep like Ctrl-C (run_sweep turns SIGTERM into KeyboardInterrupt while it runs).
    try:
        outcome = api.run_planned(
            planned,
            args.results,
            jobs=args.jobs,
            executor=args.executor,
            progress=not args.quiet and sys.stderr.isatty(),
            device=args.device,
            address=args.address,
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            log_to=_log_to(args),
            save_adapter=args.save_adapter,
        )
    except KeyboardInterrupt:
        finished = sum(load_record(p.record).ok for p in planned)
        print(
            f"interrupted: {finished} of {len(planned)} runs finished, {len(planned) - finished} left; "
            f"rerun the same command to finish",
            file=sys.stderr,
        )
        return 130
    if not args.no_leaderboard:
        _print_leaderboard(args.results, {p.config.config_hash for p in planned})
    return outcome.exit_code()


def _plan_table(planned) -> str:
    from tabulate import tabulate

    from peftbench import registry
    from peftbench.harness.run.plan import (
        budget_mismatches,
        method_config_of,
        planned_adapter_count,
        planned_peak_count,
    )

    rows, notes = [], {}
    for p in planned:
        c = p.config
        got = planned_adapter_count(c)
        peak = planned_peak_count(c)
        note = registry.adapters.get(c.method).table_note(c.method_config)
        if note:
            notes.setdefault(note, len(notes) + 1)
        off = "-"
        if got is not None and c.budget_requested:
            off = f"{(got - c.budget_requested) / c.budget_requested:+.1%}"
        rows.append(
            {
                "task": c.task,
                "method": c.method + (f" [{notes[note]}]" if note else ""),
                "budget": c.budget or "-",
                "requested": f"{c.budget_requested:,}" if c.budget_requested else "-",
                # What the run ends with (budgeted or not), and for methods that prune, what it starts from.
                "final adapter params": f"{got:,}" if got is not None else "-",
                "peak adapter params": f"{peak:,}" if peak is not None else "-",
                "off": off,
                "hparams": _hparams(method_config_of(c)),
                "seed": c.seed,
                "record": p.status,
            }
        )
    if not any(r["peak adapter params"] != "-" for r in rows):
        for r in rows:
            del r["peak adapter params"]
    table = tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)
    off = budget_mismatches([p.config for p in planned])
    lines = [f"not matched (> 5%): {o}" for o in off] or ["every budgeted run is within 5% of its budget"]
    lines += [f"[{i}] {note}; the final count shown is the expected one, the record holds the achieved one"
              for note, i in notes.items()]  # fmt: skip
    return table + "\n\n" + "\n".join(lines)


def _hparams(config) -> str:
    """The settings that differ from the method's defaults: what the budget solved, plus any --set."""
    default = type(config)()
    changed = []
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if v != getattr(default, f.name):
            changed.append(f"{f.name}={round(v, 4) if isinstance(v, float) else v}")
    return " ".join(changed) or "defaults"


def _print_leaderboard(results: Path, hashes: set[str] | None = None) -> None:
    from peftbench.harness.report.aggregate import runs_frame, summarize
    from peftbench.harness.report.leaderboard import render

    df = runs_frame(results)
    if not df.empty and hashes is not None:
        df = df[df["config_hash"].isin(hashes)]
    print(render(summarize(df)))


def filter_runs(df, column: str, wanted, kind: str, known: list[str]):
    """Rows whose `column` is in `wanted`. A name neither registered nor in the records is a typo, and a filter
    that keeps nothing is a mistake: both are one-line errors that list the valid names."""
    import logging as _logging

    if not wanted:
        return df
    present = sorted(set(df[column].dropna())) if not df.empty else []
    for name in wanted:
        if name not in present and name not in known:
            from peftbench.registry import unknown_name_message

            raise UsageError(unknown_name_message(kind, name, sorted(set(known) | set(present))))
    kept = df[df[column].isin(wanted)] if not df.empty else df
    missing = [n for n in wanted if n not in present]
    if kept.empty:
        having = ", ".join(present) or "none"
        raise UsageError(f"no run records of {kind} {', '.join(wanted)}; {kind}s with records: {having}")
    if missing:
        _logging.getLogger(__name__).warning("no run records of %s %s", kind, ", ".join(missing))
    return kept


def cmd_leaderboard(args) -> int:
    from peftbench import registry
    from peftbench.config import PROFILES
    from peftbench.harness.report.aggregate import runs_frame, summarize
    from peftbench.harness.report.leaderboard import render

    df = runs_frame(args.results)
    df = filter_runs(df, "task", args.tasks, "task", registry.tasks.names())
    df = filter_runs(df, "method", args.methods, "method", registry.adapters.names())
    df = filter_runs(df, "profile", args.profiles, "profile", sorted(PROFILES))
    text = render(summarize(df), args.format)
    if args.format == "md" and not df.empty:
        from peftbench.harness.tune.table import recipe_sections

        text += recipe_sections(df["profile"], df["task"], df["method"])
    if args.out:
        from peftbench.records import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "leaderboard": cmd_leaderboard}
