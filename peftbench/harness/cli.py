"""The `peftbench` command. Logging is configured here and nowhere else; user errors exit 2 on one line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.args import add_set_option, int_list, names

log = logging.getLogger("peftbench")

# Harness modules that contribute a subcommand through `add_subcommand(subparsers)`, which must set
# `func=handler` on its parser; the handler takes the parsed args and returns an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "peftbench.harness.report.compare",
    "peftbench.harness.report.plot_cmd",
    "peftbench.harness.report.report_cmd",
    "peftbench.harness.regress.gate",
    "peftbench.harness.perf.cli",
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm-l6", help="alias (minilm-l6), local model directory or hub id")
    p.add_argument("--data", default="sample", help="sample (bundled, offline), hub, or a directory of JSONL files")
    p.add_argument("--profile", default="quick", help="training preset: quick, standard, regress")
    add_set_option(p, "override a method or train setting (repeatable), e.g. --set r=16 --set lr=5e-4")
    p.add_argument("--results", default="results", type=Path, help="results directory (records go to runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (the first GPU, else the CPU) | cpu | cuda | cuda:N; with --jobs N and several GPUs, one each",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftbench", description="Benchmark PEFT methods at fixed budgets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="methods and tasks in the registry")

    p = sub.add_parser("run", help="train and evaluate one configuration")
    p.add_argument("--task")
    p.add_argument("--method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", default=None, help="adapter parameter budget: 0.3M, 150K, 0.5%%")
    p.add_argument("--resolved", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--save-adapter",
        action="store_true",
        help="also save the trained adapter and head beside the record (<hash>.adapter.safetensors)",
    )
    _common(p)

    p = sub.add_parser("sweep", help="run a grid of tasks x methods x budgets x seeds, then print the leaderboard")
    p.add_argument("--tasks", type=names, required=True)
    p.add_argument("--methods", type=names, required=True)
    p.add_argument("--budgets", type=names, default=[], help="e.g. 0.3M,1.2M,0.5%%")
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--jobs", type=int, default=1, help="runs at once (local executor)")
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "inline", "ray"],
        help="local: one process per run; inline: in this process; ray: tasks on a Ray cluster",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--cpus-per-run", type=float, default=1.0)
    p.add_argument("--gpus-per-run", type=float, default=0.0)
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--no-leaderboard", action="store_true")
    _common(p)

    p = sub.add_parser("leaderboard", help="aggregate run records into tables")
    p.add_argument("--results", default="results", type=Path)
    p.add_argument("--format", default="md", choices=["md", "csv", "latex", "html"])
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of printing")
    p.add_argument("--tasks", type=names, default=None)
    p.add_argument("--methods", type=names, default=None)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_list(args) -> int:
    from peftbench import registry

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


def cmd_run(args) -> int:
    from peftbench.harness.run.data import check_local_data
    from peftbench.harness.run.devices import parse_device, refuse_multiprocess
    from peftbench.harness.run.plan import RunRequest, load_resolved, resolve
    from peftbench.harness.run.runner import execute
    from peftbench.records import lock_holder, record_path, release_lock, try_lock

    refuse_multiprocess()
    parse_device(args.device)  # a GPU asked for on a machine without one fails here, before anything is written
    if args.resolved:
        cfg = load_resolved(args.resolved)
    else:
        if not args.task or not args.method:
            raise UsageError("run needs --task and --method (see `peftbench list`)")
        _check_scoped_sets(args.sets, (args.method,))
        cfg = resolve(
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
            )
        )
    # A sweep's child (--resolved) inherits the sweep's lock on this config; a run started by hand takes its own.
    lock = None
    if not args.resolved:
        check_local_data(cfg.task, cfg.data)  # bad rows fail here, before the lock file is created
        path = record_path(args.results, cfg.task, cfg.method, cfg.config_hash)
        lock = try_lock(path)
        if lock is None:
            raise UsageError(
                f"another peftbench process (pid {lock_holder(path)}) is running this config into {args.results}; "
                f"wait for it to finish"
            )
    try:
        rec = execute(
            cfg,
            args.results,
            progress=not args.quiet and sys.stderr.isatty(),
            save_adapter=args.save_adapter,
            device=args.device,
        )
    finally:
        if lock is not None:
            release_lock(lock)
    if not rec.ok:
        print(f"run failed: {rec.error} (record: {rec.path})", file=sys.stderr)
        return 1
    m, p = rec.metrics, rec.params
    print(
        f"{cfg.task}/{cfg.method} seed {cfg.seed}: {m.primary_name} = {m.primary:.4f}; "
        f"adapter params {p.adapter:,}, trainable {p.trainable:,}; "
        f"{rec.perf.train_seconds:.1f} s; record {rec.path}"
        + (f"; weights {rec.adapter_file}" if rec.adapter_file else "")
    )
    return 0


def cmd_sweep(args) -> int:
    from peftbench.harness.run.devices import assign_gpus, parse_device, refuse_multiprocess
    from peftbench.harness.sweep.driver import expand, plan, run_sweep
    from peftbench.records import load_record

    if args.jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, got {args.jobs}")
    refuse_multiprocess()
    parse_device(args.device)
    for flag, values in (("--tasks", args.tasks), ("--methods", args.methods), ("--seeds", args.seeds)):
        if not values:
            raise UsageError(f"{flag} is empty; give a comma-separated list (see `peftbench list`)")
    _check_scoped_sets(args.sets, args.methods)
    requests = expand(
        args.tasks,
        args.methods,
        args.budgets,
        args.seeds,
        model=args.model,
        data=args.data,
        sets=tuple(args.sets),
        profile=args.profile,
        device=args.device,
    )
    planned = plan(requests, args.results)
    if args.dry_run:
        print(_plan_table(planned))
        return 0
    from peftbench.harness.run.plan import budget_mismatches

    for line in budget_mismatches([p.config for p in planned]):
        log.warning("budget not matched within 5%%: %s", line)
    todo = sum(not p.done for p in planned)
    log.info("sweep: %d configs, %d to run, %d already done", len(planned), todo, len(planned) - todo)
    # `kill <pid>` (a scheduler's stop) ends the sweep like Ctrl-C: its runs are stopped, not orphaned.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    try:
        outcome = run_sweep(
            planned,
            args.results,
            jobs=args.jobs,
            executor=args.executor,
            progress=not args.quiet and sys.stderr.isatty(),
            ray_address=args.address,
            ray_resources={"num_cpus": args.cpus_per_run, "num_gpus": args.gpus_per_run},
            device=args.device,
            gpu_envs=assign_gpus(args.jobs, args.device) if args.executor == "local" else None,
        )
    except KeyboardInterrupt:
        finished = sum(load_record(p.record).ok for p in planned)
        print(
            f"interrupted: {finished} of {len(planned)} runs finished, {len(planned) - finished} left; "
            f"rerun the same command to finish",
            file=sys.stderr,
        )
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if not args.no_leaderboard:
        _print_leaderboard(args.results, {p.config.config_hash for p in planned})
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed:", file=sys.stderr)
        for f in outcome.failed:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def _check_scoped_sets(sets: list[str], methods) -> None:
    """A `--set METHOD.key=value` for a method this command does not run would change nothing: say so."""
    from peftbench.config import check_method_scope, scoped_method

    for item in sets:
        scope = scoped_method(item)
        if scope is not None and scope not in methods:
            check_method_scope(scope, item)  # a typo gets the list of method names
            raise UsageError(
                f"--set {item} is for method {scope!r}, which this command does not run ({', '.join(methods)})"
            )


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
    if args.out:
        from peftbench.records import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "leaderboard": cmd_leaderboard}
