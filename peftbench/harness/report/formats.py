"""Renderers for one result table in Markdown, LaTeX, HTML and CSV, from one plain structure.

The table says what each cell is (text, raw value, bold = in the top group, marks such as "not learned"); each
format decides how to show it, so no format's markup can leak into another (no `**` in LaTeX or HTML, no HTML
in LaTeX). A mark is a symbol on the cell plus a line in the legend that says what it means.

    table = Table(
        title="sst2 @ 0.3M",
        headers=("method", "accuracy", "adapter params"),
        rows=(Row((Cell("method-a"), Cell("91.20 ± 0.30", 0.912, bold=True), Cell("0.300M", 300000))),),
        legend=(top_group.legend,),
        marks=(Mark("not_learned", "†", learned.legend),),
    )
    to_markdown(table); to_latex(table); to_html([table]); to_csv(table)
"""

from __future__ import annotations

import csv
import html
import io
import logging
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

VARIANT = "variant"


@dataclass(frozen=True)
class Mark:
    """A flag a cell can carry: `key` is what cells refer to, `symbol` what is printed, `meaning` the legend."""

    key: str
    symbol: str
    meaning: str


@dataclass(frozen=True)
class Cell:
    text: str
    # What CSV writes: None writes the text; a missing number is NaN (written empty), so a count column that has
    # gaps still reads back as integers.
    value: int | float | str | bool | None = None
    bold: bool = False  # e.g. in the top group
    marks: tuple[str, ...] = ()  # Mark keys


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    # The config variant (runs of one method that differ in more than the seed); shown as its own column after
    # the first one whenever any row has one, instead of being folded into the method's name.
    variant: str | None = None


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[Row, ...]
    legend: tuple[str, ...] = ()
    marks: tuple[Mark, ...] = ()

    def __post_init__(self) -> None:
        known = {m.key for m in self.marks}
        for i, row in enumerate(self.rows):
            if len(row.cells) != len(self.headers):
                raise ValueError(f"{self.title}: row {i} has {len(row.cells)} cells for {len(self.headers)} headers")
            for cell in row.cells:
                unknown = set(cell.marks) - known
                if unknown:
                    raise ValueError(f"{self.title}: row {i} uses marks {sorted(unknown)} the table does not define")


def _layout(table: Table) -> tuple[list[str], list[list[Cell]]]:
    """Headers and cells with the variant column inserted when any row has a variant."""
    headers = list(table.headers)
    rows = [list(r.cells) for r in table.rows]
    if any(r.variant for r in table.rows) and headers:
        headers.insert(1, VARIANT)
        for cells, r in zip(rows, table.rows, strict=True):
            cells.insert(1, Cell(r.variant or "", r.variant or ""))
    return headers, rows


def _used_marks(table: Table) -> list[Mark]:
    used = {k for r in table.rows for c in r.cells for k in c.marks}
    return [m for m in table.marks if m.key in used]


_NUMERIC = re.compile(r"^\s*[-+−]?(\d|\.\d)")


def _numeric_columns(headers: list[str], rows: list[list[Cell]]) -> list[bool]:
    """Columns whose filled cells all look like numbers, to be right-aligned."""
    out = []
    for j in range(len(headers)):
        filled = [r[j] for r in rows if r[j].text.strip() not in ("", "-")]
        out.append(bool(filled) and all(_NUMERIC.match(c.text) for c in filled))
    return out


# --- Markdown ----------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\|*_`])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def to_markdown(table: Table) -> str:
    headers, rows = _layout(table)
    symbols = {m.key: m.symbol for m in table.marks}
    numeric = _numeric_columns(headers, rows)

    def cell(c: Cell) -> str:
        text = _md(c.text)
        if c.bold and text:
            text = f"**{text}**"
        return text + "".join(symbols[k] for k in c.marks)

    lines = [f"### {_md(table.title)}", ""] if table.title else []
    lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    notes = [f"{m.symbol} {_md(m.meaning)}" for m in _used_marks(table)] + [_md(s) for s in table.legend]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --- LaTeX -------------------------------------------------------------------------------------------------------

_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "±": r"$\pm$", "−": "$-$", "–": "--", "—": "---", "×": r"$\times$", "≤": r"$\leq$",
    "≥": r"$\geq$", "α": r"$\alpha$", "β": r"$\beta$", "σ": r"$\sigma$", "…": r"\dots{}", "†": r"\dag{}",
    "‡": r"\ddag{}", "§": r"\S{}", "¶": r"\P{}", "\n": " ",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX paragraph or tabular cell: the ten specials and the non-ASCII signs tables use."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(table: Table, standalone: bool = False) -> str:
    """A `table` environment holding a `tabular` (plain `\\hline` rules, no extra packages); the legend sits
    under the tabular in small type. `standalone` wraps it in a minimal article that pdflatex compiles."""
    headers, rows = _layout(table)
    symbols = {m.key: m.symbol for m in table.marks}
    numeric = _numeric_columns(headers, rows)

    def cell(c: Cell) -> str:
        text = latex_escape(c.text)
        if c.bold and text:
            text = rf"\textbf{{{text}}}"
        return text + "".join(rf"\textsuperscript{{{latex_escape(symbols[k])}}}" for k in c.marks)

    lines = [r"\begin{table}[ht]", r"\centering", r"\small"]
    if table.title:
        lines.append(rf"\caption{{{latex_escape(table.title)}}}")
    lines += [
        r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
        r"\hline",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(cell(c) for c in r) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}"]
    notes = [rf"\textsuperscript{{{latex_escape(m.symbol)}}} {latex_escape(m.meaning)}" for m in _used_marks(table)]
    notes += [latex_escape(s) for s in table.legend]
    if notes:
        lines += [r"\par\smallskip", r"\parbox{\linewidth}{\footnotesize\raggedright", " \\\\\n".join(notes) + "}"]
    lines.append(r"\end{table}")
    body = "\n".join(lines) + "\n"
    if not standalone:
        return body
    return (
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n"
        "\\begin{document}\n" + body + "\\end{document}\n"
    )


# --- HTML --------------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 0.5em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #888; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.legend { font-size: 0.85em; color: #555; margin-top: 0; padding-left: 1.2em; }
""".strip()


def _html_table(table: Table) -> str:
    headers, rows = _layout(table)
    marks = {m.key: m for m in table.marks}
    numeric = _numeric_columns(headers, rows)
    esc = html.escape

    def cls(j: int) -> str:
        return ' class="num"' if numeric[j] else ""

    def cell(c: Cell, j: int) -> str:
        text = esc(c.text)
        if c.bold and text:
            text = f"<strong>{text}</strong>"
        text += "".join(f'<sup title="{esc(marks[k].meaning)}">{esc(marks[k].symbol)}</sup>' for k in c.marks)
        return f"<td{cls(j)}>{text}</td>"

    out = ["<table>"]
    if table.title:
        out.append(f"<caption>{esc(table.title)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{cls(j)}>{esc(h)}</th>" for j, h in enumerate(headers)) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(cell(c, j) for j, c in enumerate(r)) + "</tr>" for r in rows]
    out.append("</tbody>")
    out.append("</table>")
    notes = [f"<sup>{esc(m.symbol)}</sup> {esc(m.meaning)}" for m in _used_marks(table)]
    notes += [esc(s) for s in table.legend]
    if notes:
        out.append('<ul class="legend">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def to_html(tables: Table | Sequence[Table], title: str | None = None) -> str:
    """A standalone page with one or more tables, each followed by its legend."""
    tables = [tables] if isinstance(tables, Table) else list(tables)
    page_title = title or (tables[0].title if len(tables) == 1 else "peftbench results")
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(page_title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
    ]
    if title:
        parts.append(f"<h1>{html.escape(title)}</h1>")
    parts += [_html_table(t) for t in tables]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --- CSV ---------------------------------------------------------------------------------------------------------


def _csv_value(c: Cell) -> str:
    v = c.value if c.value is not None else c.text
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, numbers.Integral):
        return str(int(v))  # numpy ints too: counts stay integers
    if isinstance(v, numbers.Real):
        f = float(v)
        return "" if math.isnan(f) else repr(f)
    return str(v)


def to_csv(table: Table) -> str:
    """One header line and one line per row, values raw (ints as ints, missing as empty). A column that has bold
    or marked cells gets companions: `<header> top group` (1/0) and `<header> flags` (mark keys, ';'-joined).
    Title and legend are not written: CSV has no place for prose."""
    headers, rows = _layout(table)
    bold_cols = {j for r in rows for j, c in enumerate(r) if c.bold}
    mark_cols = {j for r in rows for j, c in enumerate(r) if c.marks}
    out_headers = []
    for j, h in enumerate(headers):
        out_headers.append(h)
        if j in bold_cols:
            out_headers.append(f"{h} top group")
        if j in mark_cols:
            out_headers.append(f"{h} flags")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(out_headers)
    for r in rows:
        line = []
        for j, c in enumerate(r):
            line.append(_csv_value(c))
            if j in bold_cols:
                line.append("1" if c.bold else "0")
            if j in mark_cols:
                line.append(";".join(c.marks))
        writer.writerow(line)
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "latex": to_latex, "html": to_html, "csv": to_csv}


def html_table(table: Table) -> str:
    """One table and its legend as an HTML fragment (no page around it), for pages that hold more than tables;
    the class names are those of `to_html`'s stylesheet."""
    return _html_table(table)
