#!/usr/bin/env python3
"""Build the bundled offline SQuAD samples from HF-schema JSONL files (stdlib only).

    python scripts/make_squad_samples.py SOURCE [--out peftbench/tasks/data]

SOURCE holds squad/{train,validation}.jsonl and squad_v2/{train,validation}.jsonl, one HF row per line in
the official file order (e.g. /work/shared/data). The sample takes whole articles only, so that no context
and no near-duplicate question of a sampled article is left on the other side of a train/eval split, and so
that a paragraph's questions stay together as in the real data.

Which articles: articles with unanswerable questions come first (only 2 of the 10 squad_v2 train articles
have any, and training v2 without them would be pointless), then articles in the order of the sha256 of
their title, a fixed pseudo-random order that needs no seed. An article is taken when it keeps the split
under its question cap, otherwise skipped. The rows of the chosen articles are written in source order,
byte for byte as they are in the source, to `<out>/<task>/<split>.jsonl.gz` (gzip, mtime 0, no file name).
`<out>/<task>/articles.json` lists, per split, the source file's sha256 and each chosen article with its
question count, so that tests can check the articles are whole without the source.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

# Questions per split at most: a few thousand, so a CPU run evaluates in about a minute.
CAPS = {"train": 3500, "validation": 2000}
TASKS = ("squad", "squad_v2")


def read_articles(path: Path) -> dict[str, list[bytes]]:
    """Raw lines per article title, in source order; an article must be contiguous in the source."""
    articles: dict[str, list[bytes]] = {}
    last = None
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            title = json.loads(line)["title"]
            if title != last and title in articles:
                sys.exit(f"{path}:{n}: article {title!r} is split in two; the source must keep articles together")
            last = title
            articles.setdefault(title, []).append(line if line.endswith(b"\n") else line + b"\n")
    return articles


def has_unanswerable(lines: list[bytes]) -> bool:
    return any(not json.loads(line)["answers"]["text"] for line in lines)


def choose(articles: dict[str, list[bytes]], cap: int) -> list[str]:
    """Titles to keep, in source order."""
    order = sorted(
        articles,
        key=lambda t: (not has_unanswerable(articles[t]), hashlib.sha256(t.encode("utf-8")).hexdigest()),
    )
    chosen, total = set(), 0
    for title in order:
        if total + len(articles[title]) <= cap:
            chosen.add(title)
            total += len(articles[title])
    return [t for t in articles if t in chosen]


def write_gzip(path: Path, data: bytes) -> None:
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: the same rows always give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    path.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with squad/ and squad_v2/ HF-schema JSONL files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "peftbench/tasks/data")
    args = parser.parse_args(argv)
    for task in TASKS:
        manifest: dict[str, dict] = {}
        (args.out / task).mkdir(parents=True, exist_ok=True)
        for split, cap in CAPS.items():
            src = args.source / task / f"{split}.jsonl"
            if not src.is_file():
                sys.exit(f"missing {src}: SOURCE must hold squad/ and squad_v2/ with train.jsonl and validation.jsonl")
            articles = read_articles(src)
            titles = choose(articles, cap)
            rows = [line for t in titles for line in articles[t]]
            write_gzip(args.out / task / f"{split}.jsonl.gz", b"".join(rows))
            manifest[split] = {
                "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "source_articles": len(articles),
                "source_questions": sum(len(v) for v in articles.values()),
                "questions": len(rows),
                "articles": {t: len(articles[t]) for t in titles},
            }
            print(f"{task}/{split}: {len(titles)} of {len(articles)} articles, {len(rows)} questions")
            for t in titles:
                print(f"  {t}: {len(articles[t])}")
        text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
        (args.out / task / "articles.json").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
