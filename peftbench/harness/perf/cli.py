"""`peftbench perf`: speed and memory of every method side by side, measured in one process, written to
results/perf/<device>.md. The steps benchmark lives in steps.py (its memory and profile tools in
profile.py), whole runs in e2e.py, the report in report.py; this module holds the command and
imports nothing heavy until it runs."""

from __future__ import annotations

import logging
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.args import names

log = logging.getLogger(__name__)

SHAPES = ("fixed", "sst2", "mnli")
SECTIONS = ("steps", "padding", "harness", "trainer")
MODEL_CONFIGS = ("bert-base",)
# Per device: (warm-up steps, timed rounds) on the first shape, whose first two warm-up steps are the memory
# measurement. Later shapes reuse warm models: one warm-up step on CPU (and three timed rounds). Sized so that
# `make perf` on two shared CPU cores stays within about ten minutes; ratios come from per-round CPU time,
# which background load moves far less than wall time, so a few rounds suffice.
DEFAULT_STEPS = {"cpu": (2, 4), "cuda": (3, 20)}


def add_subcommand(sub) -> None:
    p = sub.add_parser("perf", help="speed and memory of every method (and peft's) side by side")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="minilm-l6", help="alias (minilm-l6), local model directory or hub id")
    p.add_argument(
        "--model-config",
        default=None,
        choices=MODEL_CONFIGS,
        help="build a randomly initialised model of this size from a BertConfig (no download; overrides --model)",
    )
    p.add_argument(
        "--methods", type=names, default=None, help="registered methods to time (default: every native method)"
    )
    p.add_argument(
        "--precisions",
        type=names,
        default=None,
        help="fp32, bf16 (fp16 on GPUs): each section in each, side by side (default: fp32 and what auto picks here)",
    )
    p.add_argument("--shapes", type=names, default=list(SHAPES), help="fixed (32x128), sst2, mnli")
    p.add_argument("--sections", type=names, default=list(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps per method on the first shape, the first two measuring memory (CPU 2, GPU 3); "
        "later shapes take 1 on CPU",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed rounds per shape, every method once per round (CPU: 4 on the first shape, 3 on the others; "
        "GPU: 20)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="examples per step in the step benchmark")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the fixed shape")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 1; 0: torch's default)")
    p.add_argument("--epoch-rows", type=int, default=192, help="SST-2 rows in the grouped vs padded epoch")
    p.add_argument("--e2e-rows", type=int, default=1000, help="SST-2 training rows of the harness/Trainer runs")
    p.add_argument(
        "--e2e-batch-size",
        type=int,
        default=16,
        help="batch of the harness/bare/Trainer runs (16: 1,000 rows give 63 updates, enough to learn SST-2)",
    )
    p.add_argument("--eval-rows", type=int, default=872, help="SST-2 validation rows scored (872: all)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s for MFU")
    p.add_argument("--no-peft", action="store_true", help="leave out peft's rows and the Trainer run")
    p.add_argument("--out", type=Path, default=None, help="markdown path (default results/perf/<device>.md)")
    p.set_defaults(func=cmd_perf)


def _check(args) -> None:
    for name in ("batch_size", "seq_len", "epoch_rows", "e2e_rows", "e2e_batch_size", "eval_rows"):
        if getattr(args, name) < 1:
            raise UsageError(f"perf --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    bad = [s for s in args.shapes if s not in SHAPES]
    if bad:
        raise UsageError(f"unknown perf shape {bad[0]!r}; choose from {', '.join(SHAPES)}")
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        raise UsageError(f"unknown perf section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    from peftbench import registry

    if args.methods is None:
        # Native methods only: peft's side is timed as each one's twin (and a peft-* method can be asked by name).
        found, _ = registry.adapters.loadable()
        args.methods = [n for n, cls in found.items() if cls.implementation == "native"]
    for m in args.methods:
        registry.adapters.get(m)  # an unknown name raises a UsageError listing close matches
    bad = [p for p in args.precisions or () if p not in ("fp32", "bf16", "fp16")]
    if bad:
        raise UsageError(f"unknown perf precision {bad[0]!r}; choose from fp32, bf16, fp16")
    if args.warmup is not None and args.warmup < 1:
        raise UsageError(f"perf --warmup must be >= 1, got {args.warmup}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"perf --steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 0:
        raise UsageError(f"perf --threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise UsageError(f"perf --peak-tflops must be > 0, got {args.peak_tflops}")


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("perf --device cuda: no CUDA device visible to torch; use --device cpu")
    if name == "cpu" and torch.cuda.is_available():
        # The runner picks the GPU by itself whenever one is visible; hiding it is the only way to keep every
        # part of the benchmark on the CPU.
        raise UsageError("perf --device cpu with a GPU visible: run it as CUDA_VISIBLE_DEVICES= peftbench perf ...")
    return torch.device(name)


def _bert_base_dir(tmp: Path) -> Path:
    """A BERT-base-sized model (BertConfig defaults, random weights) with the MiniLM tokenizer (same uncased
    vocabulary), saved like any local model directory, so every part of perf can load it offline."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from peftbench.harness.run.models import MINILM, packaged_dir

    torch.manual_seed(0)
    d = tmp / "bert-base-random"
    BertModel(BertConfig()).save_pretrained(d)
    src = packaged_dir(MINILM["package"])
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, d / name)
    return d


def command_line(args) -> str:
    parts = ["peftbench", "perf", "--device", args.device]
    parts += ["--model-config", args.model_config] if args.model_config else ["--model", args.model]
    parts += ["--methods", ",".join(args.methods), "--shapes", ",".join(args.shapes)]
    parts += ["--sections", ",".join(args.sections), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    parts += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    parts += ["--epoch-rows", str(args.epoch_rows), "--e2e-rows", str(args.e2e_rows)]
    parts += ["--e2e-batch-size", str(args.e2e_batch_size)]
    parts += ["--eval-rows", str(args.eval_rows)]
    if args.peak_tflops:
        parts += ["--peak-tflops", str(args.peak_tflops)]
    if args.no_peft:
        parts.append("--no-peft")
    if getattr(args, "precisions", None):
        parts += ["--precisions", ",".join(args.precisions)]
    return " ".join(parts)


def cmd_perf(args) -> int:
    _check(args)
    import importlib.util
    import tempfile
    import time
    from datetime import datetime, timezone

    import torch
    import transformers

    from peftbench.harness.perf import report as perf_report

    device = _device(args.device)
    warmup, steps = DEFAULT_STEPS[device.type]
    args.steps_given = args.steps is not None
    args.warmup = args.warmup if args.warmup is not None else warmup
    args.steps = args.steps if args.steps is not None else steps
    if device.type == "cpu":
        # One thread by default: on a shared machine a multi-threaded op waits at every barrier for whichever
        # thread was descheduled, and the thread's own CPU time (our ratios) is then exact.
        args.threads = 1 if args.threads is None else args.threads
        if args.threads > 0:
            torch.set_num_threads(args.threads)
    args.threads = args.threads if args.threads is not None else 0
    with_peft = not args.no_peft and importlib.util.find_spec("peft") is not None
    transformers.logging.set_verbosity_error()
    from peftbench.harness.run.devices import make_accelerator
    from peftbench.harness.run.precision import choose_precision

    if args.precisions is None:
        args.precisions = list(dict.fromkeys(["fp32", choose_precision("auto", device).precision]))
    started = datetime.now(timezone.utc)
    cpu0 = time.process_time()
    data: dict = {"by_precision": {}}
    with tempfile.TemporaryDirectory(prefix="peftbench-perf-model-") as tmp:
        from peftbench.harness.run.models import resolve_model

        model_name = str(_bert_base_dir(Path(tmp))) if args.model_config else args.model
        model_ref = resolve_model(model_name)
        for precision in args.precisions:
            choice = choose_precision(precision, device)
            # The step benchmark takes the harness's own step, so it needs the accelerator a run would have.
            accelerator = make_accelerator(device, choice)
            part: dict = {"steps": {}, "e2e": {}, "profiles": {}, "precision": precision, "reason": choice.reason}
            log.info("perf: %s (%s)", precision, choice.reason)
            if "steps" in args.sections:
                part["steps"], part["profiles"], data["model"] = _run_steps(
                    args, model_ref, device, accelerator, with_peft, precision
                )
            e2e_sections = {s for s in args.sections if s != "steps"}
            if e2e_sections:
                from peftbench.harness.perf.e2e import run_e2e

                part["e2e"] = run_e2e(
                    model_name, model_ref, device, accelerator.autocast, args.epoch_rows, args.e2e_rows,
                    args.e2e_batch_size, args.eval_rows, e2e_sections, with_peft, precision,
                )  # fmt: skip
            data["by_precision"][precision] = part
    # The first precision's parts also at the top level, where the single-precision parts of the report read them.
    first = data["by_precision"][args.precisions[0]]
    data.update(steps=first["steps"], e2e=first["e2e"], profiles=first["profiles"])
    data["command"] = command_line(args)
    data["started"] = started.isoformat(timespec="seconds")
    data["minutes"] = (datetime.now(timezone.utc) - started).total_seconds() / 60
    data["cpu_minutes"] = (time.process_time() - cpu0) / 60
    data["with_peft"] = with_peft
    data["device"] = device.type
    data["model_label"] = args.model_config + " (random init)" if args.model_config else args.model
    out = args.out or Path("results") / "perf" / f"{device.type}.md"
    written = perf_report.write(out, data, args, device)
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_steps(args, model_ref, device, accelerator, with_peft, precision="fp32"):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftbench.harness.perf import steps as ps
    from peftbench.harness.perf.profile import profile_diff
    from peftbench.harness.perf.report import missed_step_methods

    # One 3-way head for every shape (SST-2 labels fit it); the head's size does not matter to the timings.
    base = AutoModelForSequenceClassification.from_pretrained(model_ref.path, revision=model_ref.revision, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(model_ref.path, revision=model_ref.revision)
    model_info = {
        "params": sum(p.numel() for p in base.parameters()),
        "layers": base.config.num_hidden_layers,
        "hidden": base.config.hidden_size,
    }
    frozen = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    runs = ps.build_methods(base, args.methods, with_peft, device, accelerator, frozen)
    peak = _peak_flops(args, device)
    results, profiles = {}, {}
    for k, shape in enumerate(args.shapes):
        warm = args.warmup if k == 0 or device.type == "cuda" else 1
        rounds = args.steps if k == 0 or device.type == "cuda" or args.steps_given else min(args.steps, 3)
        n = warm + rounds
        if shape == "fixed":
            batches = ps.fixed_batches(n, args.batch_size, args.seq_len, base.config.vocab_size, 3, device, seed=k)
        else:
            batches = ps.glue_batches(shape, tokenizer, n, args.batch_size, 128, device, seed=k)
        log.info("perf: %s batches, %d methods x (%d warm-up + %d timed) steps", shape, len(runs), warm, rounds)
        ps.run_shape(runs, batches, warm, device, memory=k == 0)
        timer = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
        results[shape] = ps.summarize(runs, batches, timer, peak, base)
        results[shape]["timer"] = timer
        if k == 0:
            floor = runs[0]
            for name in missed_step_methods(results[shape], device.type):
                run = next(r for r in runs if r.name == name)
                profiles[name] = profile_diff(run, floor, batches[-1])
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results, profiles, model_info


# Dense bf16 tensor-core peaks (TFLOP/s) by device name; --peak-tflops overrides.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


def _peak_flops(args, device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    log.warning("perf: peak bf16 FLOP/s of %r unknown; pass --peak-tflops for MFU", name)
    return None
