"""Table renderers: each format parsed or compiled back, and no markup leaking from one format into another."""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from peftbench.harness.report.formats import (
    Cell,
    Mark,
    Row,
    Table,
    latex_escape,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)

NOT_LEARNED = Mark("not_learned", "†", "not learned: not better than the majority class (α = 0.05)")
TOP = "bold: best mean and every method not significantly worse than it (Holm over 2 comparison(s), α = 0.05)"
NASTY = r"a_b 50% & #1 $x$ {y} ~z ^w \path <tag> | *star*"


def table(variants: bool = False) -> Table:
    return Table(
        title="sst2 @ 0.3M (profile quick) & 10% data_rows",
        headers=("method", "accuracy (primary)", "n", "adapter params", "note"),
        rows=(
            Row(
                (Cell("dora"), Cell("92.05 ± 0.43", 0.9205, bold=True), Cell("3", 3), Cell("0.300M", 300_000),
                 Cell(NASTY)),
                variant="r=8" if variants else None,
            ),
            Row(
                (Cell("lora"), Cell("91.80 ± 0.52", 0.918, bold=True), Cell("3", np.int64(3)),
                 Cell("0.295M", 295_000), Cell("")),
            ),
            Row(
                (Cell("adalora"), Cell("50.92 ± 0.00", 0.5092, marks=("not_learned",)), Cell("2", 2),
                 Cell("-", math.nan), Cell("-")),
                variant="r=4 lr=1e-3" if variants else None,
            ),
        ),
        legend=(TOP,),
        marks=(NOT_LEARNED, Mark("unused", "‡", "never used")),
    )  # fmt: skip


# --- Markdown ----------------------------------------------------------------------------------------------------


def test_markdown_bold_marks_and_legend():
    md = to_markdown(table())
    assert "**92.05 ± 0.43**" in md and "**91.80 ± 0.52**" in md
    assert "50.92 ± 0.00†" in md and "**50.92" not in md
    assert "- † not learned: not better than the majority class (α = 0.05)" in md
    assert "never used" not in md  # only marks that cells carry go in the legend
    rows = [line for line in md.splitlines() if line.startswith("|")]
    # Escaped pipes keep every row at the header's column count.
    assert {len(re.split(r"(?<!\\)\|", r)) for r in rows} == {7}
    assert r"a\_b" in md and r"\*star\*" in md and r"\| " in md


def test_markdown_variant_column():
    md = to_markdown(table(variants=True))
    header = md.splitlines()[2]
    assert header.startswith("| method | variant | accuracy")
    assert "| dora | r=8 |" in md and "| lora |  |" in md


# --- HTML --------------------------------------------------------------------------------------------------------

_VOID = {"meta", "br", "hr", "img", "link", "input"}


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.seen: list[str] = []
        self.text: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    return c


def test_html_is_a_balanced_standalone_page():
    page = to_html([table(), table(variants=True)], title="Leaderboard <draft>")
    c = parse(page)
    assert c.doctype.lower() == "doctype html" and page.startswith("<!doctype html>")
    assert c.problems == [] and c.stack == []
    assert c.seen.count("table") == 2 and c.seen.count("strong") == 4 and "style" in c.seen
    text = "".join(c.text)
    assert "**" not in page and "Leaderboard <draft>" in text and NASTY in text
    assert "<tag>" not in page and "&lt;tag&gt;" in page
    assert "not learned: not better than the majority class" in text and TOP in text
    assert "variant" in text and "r=4 lr=1e-3" in text


def test_html_single_table_uses_its_title():
    page = to_html(table())
    assert "<title>sst2 @ 0.3M (profile quick) &amp; 10% data_rows</title>" in page and "<h1>" not in page


# --- LaTeX -------------------------------------------------------------------------------------------------------


def _unescaped_specials(tex: str) -> list[str]:
    """Specials outside the commands the renderer writes: & only as column separators, no bare % # _ ~ ^."""
    body = tex.split(r"\begin{tabular}", 1)[1]
    problems = []
    for line in body.splitlines():
        stripped = re.sub(r"\\[a-zA-Z]+\{?|\\[&%$#_{}]|\$\\pm\$|\$-\$|\$\\alpha\$", "", line)
        for ch in "%#_~^":
            if ch in stripped:
                problems.append(f"{ch!r} in {line!r}")
    return problems


def test_latex_escapes_and_never_uses_markdown_bold():
    tex = to_latex(table(variants=True))
    assert "**" not in tex and "<strong>" not in tex
    assert r"\textbf{92.05 $\pm$ 0.43}" in tex and r"50.92 $\pm$ 0.00\textsuperscript{\dag{}}" in tex
    assert r"\begin{table}" in tex and r"\begin{tabular}{llrrrl}" in tex
    assert r"a\_b 50\% \& \#1 \$x\$ \{y\} \textasciitilde{}z \textasciicircum{}w \textbackslash{}path" in tex
    assert r"\textless{}tag\textgreater{} \textbar{} *star*" in tex
    assert r"\caption{sst2 @ 0.3M (profile quick) \& 10\% data\_rows}" in tex
    assert r"\textsuperscript{\dag{}} not learned" in tex and r"$\alpha$ = 0.05" in tex
    assert _unescaped_specials(tex) == []
    # Each body row has as many & separators as the header.
    rows = [line for line in tex.splitlines() if line.endswith(r"\\") and "&" in line]
    assert {len(re.findall(r"(?<!\\)&", r)) for r in rows} == {5}


def test_latex_escape_each_special():
    want = {
        "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    }  # fmt: skip
    for ch, escaped in want.items():
        assert latex_escape(f"a{ch}b") == f"a{escaped}b"
    # Escaping is one pass: the braces an escape introduces are not escaped again.
    assert latex_escape("\\{") == r"\textbackslash{}\{"


def test_latex_compiles(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install -y texlive-latex-base); escaping is checked above")
    (tmp_path / "t.tex").write_text(to_latex(table(variants=True), standalone=True), encoding="utf-8")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0
    log = (tmp_path / "t.log").read_text(encoding="utf-8", errors="replace")
    assert "Missing character" not in log


# --- CSV ---------------------------------------------------------------------------------------------------------


def test_csv_round_trips_with_integer_counts_and_flag_columns():
    text = to_csv(table(variants=True))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "method", "variant", "accuracy (primary)", "accuracy (primary) top group", "accuracy (primary) flags",
        "n", "adapter params", "note",
    ]  # fmt: skip
    assert [r["variant"] for r in rows] == ["r=8", "", "r=4 lr=1e-3"]
    for r in rows:
        assert "." not in r["n"] and isinstance(int(r["n"]), int)
    assert [r["adapter params"] for r in rows] == ["300000", "295000", ""]
    assert int(rows[0]["adapter params"]) == 300_000
    assert float(rows[0]["accuracy (primary)"]) == 0.9205
    assert [r["accuracy (primary) top group"] for r in rows] == ["1", "1", "0"]
    assert [r["accuracy (primary) flags"] for r in rows] == ["", "", "not_learned"]
    assert rows[0]["note"] == NASTY and "**" not in text and "†" not in text


def test_csv_without_variants_has_no_variant_column():
    header = next(csv.reader(io.StringIO(to_csv(table()))))
    assert "variant" not in header


def test_table_checks_its_shape_and_marks():
    with pytest.raises(ValueError, match="2 cells for 1 headers"):
        Table("t", ("a",), (Row((Cell("x"), Cell("y"))),))
    with pytest.raises(ValueError, match="does not define"):
        Table("t", ("a",), (Row((Cell("x", marks=("nope",)),)),))
