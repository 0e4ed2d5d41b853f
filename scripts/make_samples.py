#!/usr/bin/env python3
"""Build the bundled offline GLUE samples: peftbench/tasks/data/glue/<config>/<split>.jsonl.gz.

    python scripts/make_samples.py SOURCE_DIR [--out DIR]

SOURCE_DIR is the HF-schema JSONL tree described in its README.md (`glue/<config>/<split>.jsonl`). Stdlib
only and deterministic: the same source gives byte-identical output (gzip mtime 0, no file name in the gzip
header, subsets picked by sha256 ranks rather than a random generator). Rows are copied as the source's own
bytes, so keys, key order and values (e.g. stsb's 3.8) are exactly the source's.

Selection, per output file:
  * train: the first TRAIN_CAP rows in file order (all rows where the source has fewer).
  * evaluation splits: all rows where the source has at most EVAL_CAP, else a stratified subset of EVAL_CAP
    rows: each label keeps its share of the source (largest remainder), and within a label the rows with the
    lowest sha256("<SEED>/<config>/<source split>/<row position>") are taken; written in source order.
  * qnli has no train split in the source: its validation file is split in two disjoint parts, the stratified
    EVAL_CAP subset as validation and all other rows as train.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("make_samples")

TRAIN_CAP = 8000
EVAL_CAP = 2000
SEED = "peftbench-glue-sample-v1"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "peftbench" / "tasks" / "data" / "glue"

# HF column order per config (nyu-mll/glue): text columns, label, idx.
COLUMNS = {
    "cola": ("sentence", "label", "idx"),
    "sst2": ("sentence", "label", "idx"),
    "mrpc": ("sentence1", "sentence2", "label", "idx"),
    "qqp": ("question1", "question2", "label", "idx"),
    "stsb": ("sentence1", "sentence2", "label", "idx"),
    "mnli": ("premise", "hypothesis", "label", "idx"),
    "qnli": ("question", "sentence", "label", "idx"),
    "rte": ("sentence1", "sentence2", "label", "idx"),
    "wnli": ("sentence1", "sentence2", "label", "idx"),
}

# sha256 of the source files as recorded in the source README; the output is only reproducible from these.
SOURCE_SHA256 = {
    "cola/train": "87edb36afb84ac8c1028fb88fc9b2b59faba12fe0b9fddcb70c6edc7c1a414e0",
    "cola/validation": "f1be91109bb2c43ca9e7cdd250ed7fba7594aadff8fe574f76a00a2a8bb6edda",
    "sst2/train": "7dd4228f828247d13de1c4f376a915a58d0d8de647e3c67952f49fa244b15419",
    "sst2/validation": "20261be2be7152f1b741fb50fe92d43b7d9a53db16f8d7a9d122ba7ff89c1400",
    "mrpc/train": "02fcbdf8f1f59d59d3bff925d2efc3622a398793ccfb1833a05c3e4a0829041c",
    "mrpc/validation": "81ccd872a468c96ae1270b68ce03fc25ddf86c738860f0e2296b078f75eeb1dd",
    "stsb/train": "bd70f620b1637ebc9e8c50b95871f42df23d50ed101cdaba8ce4fc2f95badeaf",
    "stsb/validation": "20f639a1dfa0b8a8e31b0d5815c630b4eaf32ad33f9b4d67bc4e18164dfcdce9",
    "mnli/train": "4111c2990fe71ca1d10763349969368f8fdc7ce637fc79f94e7559e4f5d57ff6",
    "mnli/validation_matched": "ab25d0a9839a1a624a3decef0d0a567bdd3914c502fa6e43acc1abf772e2b683",
    "mnli/validation_mismatched": "db25b9b81735a77493511fd188ecf00087ad982f5131eebecd6d8b1381a0b5ed",
    "qnli/validation": "7ac1c538a570c81ec7ff4f97f510526cbb7c3cecce9d8507ed87753b45dd92e7",
    "qqp/train": "653b7dfde0bda149af7c21fc93fe9cb6eaf443681159c28fec3f55605ec2d9c8",
    "qqp/validation": "279b430c5af984e62552dc80d424b2faf9306334e8f554164a7a8c44f26169c1",
    "rte/train": "4a0f68451bf8e87c0020e2a694675cffbb7aa8c91ab4e5572bcfb76e843877be",
    "rte/validation": "aabcfc66a9822029cf4b38ff3e6d0d78f7e0fecd5232ca008f338e6c4f657eb1",
    "wnli/train": "52eaa4bc7f4e94457c10ed5baf2799253188f844455c062278b7f30e6df7ef8e",
    "wnli/validation": "a00b8696f8a6cd44ec6d648de2679b97f2144ee9f57d79c055dfff21b6d81911",
}


@dataclass(frozen=True)
class Part:
    """One output file: which source split it comes from and how its rows are chosen."""

    config: str
    split: str
    source: str
    how: str  # "head": first rows; "stratified": the EVAL_CAP subset; "rest": the source minus that subset


def plan() -> list[Part]:
    parts = []
    for config in COLUMNS:
        if config == "qnli":
            parts += [
                Part(config, "train", "validation", "rest"),
                Part(config, "validation", "validation", "stratified"),
            ]
            continue
        parts.append(Part(config, "train", "train", "head"))
        evals = ("validation_matched", "validation_mismatched") if config == "mnli" else ("validation",)
        parts += [Part(config, split, split, "stratified") for split in evals]
    return parts


@dataclass(frozen=True)
class Source:
    lines: list[bytes]  # each line's exact bytes, newline included
    labels: list[int | float]


def read_source(path: Path, columns: tuple[str, ...]) -> Source:
    lines = path.read_bytes().splitlines(keepends=True)
    labels = []
    for n, line in enumerate(lines, 1):
        row = json.loads(line)
        if tuple(row) != columns:
            raise SystemExit(f"{path}:{n}: keys {list(row)}, expected {list(columns)} (HF order)")
        labels.append(row["label"])
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    return Source(lines, labels)


def rank_key(config: str, split: str, position: int) -> str:
    return hashlib.sha256(f"{SEED}/{config}/{split}/{position}".encode()).hexdigest()


def stratum(label: int | float) -> int:
    # Regression scores (stsb) are grouped by their integer part; class labels are their own stratum.
    return int(label)


def stratified_subset(labels: list[int | float], n: int, config: str, split: str) -> list[int]:
    """Positions (sorted) of n rows keeping each stratum's share; every position when there are at most n."""
    if len(labels) <= n:
        return list(range(len(labels)))
    groups: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        groups.setdefault(stratum(label), []).append(pos)
    exact = {s: n * len(g) / len(labels) for s, g in groups.items()}
    quota = {s: int(q) for s, q in exact.items()}
    # Largest remainder; ties go to the smaller stratum key so the result does not depend on dict order.
    for s in sorted(groups, key=lambda s: (quota[s] - exact[s], s))[: n - sum(quota.values())]:
        quota[s] += 1
    chosen: list[int] = []
    for s, g in groups.items():
        chosen += sorted(g, key=lambda pos: rank_key(config, split, pos))[: quota[s]]
    return sorted(chosen)


def select(part: Part, source: Source) -> list[int]:
    if part.how == "head":
        return list(range(min(TRAIN_CAP, len(source.lines))))
    subset = stratified_subset(source.labels, EVAL_CAP, part.config, part.source)
    if part.how == "stratified":
        return subset
    if part.how == "rest":
        taken = set(subset)
        return [pos for pos in range(len(source.lines)) if pos not in taken]
    raise ValueError(f"unknown selection {part.how!r}")


def write_gz(path: Path, lines: list[bytes]) -> None:
    """gzip with mtime 0 and no stored file name, written via a temp file so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.writelines(lines)
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source_dir: Path, out_dir: Path, check_sha256: bool = True) -> list[dict]:
    """Write every planned file; returns one summary dict per file."""
    sources: dict[str, Source] = {}
    summary = []
    for part in plan():
        key = f"{part.config}/{part.source}"
        if key not in sources:
            path = source_dir / "glue" / f"{key}.jsonl"
            if not path.is_file():
                raise SystemExit(f"missing source file {path}; SOURCE_DIR must hold glue/<config>/<split>.jsonl")
            digest = sha256_file(path)
            if digest != SOURCE_SHA256[key]:
                if check_sha256:
                    raise SystemExit(f"{path}: sha256 {digest} is not the recorded {SOURCE_SHA256[key]}")
                log.warning("%s: sha256 differs from the recorded source; output will differ too", path)
            sources[key] = read_source(path, COLUMNS[part.config])
        source = sources[key]
        positions = select(part, source)
        out = out_dir / part.config / f"{part.split}.jsonl.gz"
        write_gz(out, [source.lines[p] for p in positions])
        labels = Counter(stratum(source.labels[p]) for p in positions)
        summary.append(
            {
                "file": f"{part.config}/{part.split}.jsonl.gz",
                "source": f"glue/{key}.jsonl",
                "how": "all" if len(positions) == len(source.lines) else part.how,
                "rows": len(positions),
                "of": len(source.lines),
                "labels": dict(sorted(labels.items())),
                "bytes": out.stat().st_size,
                "sha256": sha256_file(out),
            }
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_dir", type=Path, help="directory holding glue/<config>/<split>.jsonl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--allow-other-source", action="store_true", help="warn instead of failing when a source sha256 differs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = build(args.source_dir, args.out, check_sha256=not args.allow_other_source)
    for s in summary:
        log.info(
            "%-36s %-7s %5d of %5d rows  %8d bytes  labels %s  sha256 %s",
            s["file"], s["how"], s["rows"], s["of"], s["bytes"], s["labels"], s["sha256"],
        )  # fmt: skip
    log.info("total %d bytes in %d files", sum(s["bytes"] for s in summary), len(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
