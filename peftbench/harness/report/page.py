"""The HTML of `peftbench report`: one static page, its own stylesheet inline, images by relative path, no
script and nothing fetched from anywhere. Every sentence of prose is built here from measured numbers; the
numbers themselves come from verdict.py, ranks.py, detectors.py and the records."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peftbench.harness.report.detectors import Flag
from peftbench.harness.report.page_groups import Arm, Group
from peftbench.harness.report.ranks import TOP_FRACTION, RankSummary
from peftbench.harness.report.verdict import HELPS, HURTS, NEITHER, TIES, Verdict

log = logging.getLogger(__name__)

SECTIONS = ("verdict", "ranks", "schedule", "detectors", "cost", "leaderboard")
TITLES = {
    "verdict": "1. Verdict",
    "ranks": "2. Where the rank went",
    "schedule": "3. What the schedule did",
    "detectors": "4. Failure-mode detectors",
    "cost": "5. Cost",
    "leaderboard": "6. Leaderboard",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1280px;
       padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.3em; }
nav ul { font-size: 0.9em; }
section.part { margin: 0.8em 0 1.4em; }
p.legend { font-size: 0.88em; color: #444; background: #f6f6f4; border-left: 3px solid #bbb; padding: 0.4em 0.7em; }
.word { font-weight: 700; padding: 0.05em 0.4em; border-radius: 3px; }
.helps { background: #d8f0d8; } .hurts { background: #f6d5d5; } .ties { background: #e6e6e6; }
.neither-learned, .untested { background: #f3e7c4; }
.flag-on { color: #a40000; font-weight: 600; } .flag-off { color: #2a6a2a; } .flag-na { color: #777; }
.side { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.side img { max-width: 560px; }
table { border-collapse: collapse; margin: 0.6em 0 0.4em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #888; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.legend { font-size: 0.85em; color: #555; margin-top: 0; padding-left: 1.2em; }
""".strip()

esc = html.escape


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the page
    alt: str


@dataclass(frozen=True)
class RankView:
    arm: Arm
    summary: RankSummary
    heatmap: Figure | None
    reference_rank: int | None
    reference_label: str


@dataclass(frozen=True)
class ScheduleView:
    arm: Arm
    figure: Figure | None
    legend: str


@dataclass(frozen=True)
class CostRow:
    arm: Arm
    step_ms: float | None
    tokens_s: float | None
    peak_bytes: float | None
    memory_kind: str
    adapter: float | None
    adapter_peak: float | None


@dataclass(frozen=True)
class GroupView:
    group: Group
    scale: float
    unit: str
    metric: str
    verdicts: tuple[tuple[Verdict, str, str], ...]  # verdict, challenger label, reference label
    ranks: tuple[RankView, ...]
    schedules: tuple[ScheduleView, ...]
    flags: tuple[Flag, ...]
    loss_figure: Figure | None
    cost: tuple[CostRow, ...]
    ema_lines: tuple[str, ...]
    table_html: str
    baseline_note: str


def img(fig: Figure | None) -> str:
    return f'<img src="{esc(fig.path)}" alt="{esc(fig.alt)}">' if fig else ""


def legend(text: str) -> str:
    return f'<p class="legend">{esc(text)}</p>'


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _p(p: float | None) -> str:
    return "n/a" if p is None or math.isnan(p) else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


# --- 1. verdict ---------------------------------------------------------------------------------------------------


def verdict_line(v: Verdict, label: str, ref_label: str, scale: float, unit: str, metric: str) -> str:
    word = f'<span class="word {v.word.replace(" ", "-")}">{esc(v.word)}</span>'
    if not v.seeds:
        return f"<li>{esc(label)} vs {esc(ref_label)}: {word}. {esc('; '.join(v.notes))}</li>"
    parts = [f"{label} - {ref_label} = {v.diff * scale:+.2f}{unit} {metric} (mean over {len(v.seeds)} shared seed(s))"]
    if v.seed_test is not None:
        st = v.seed_test
        parts.append(f"seeds: paired t-test, 95% CI [{st.ci[0] * scale:+.2f}, {st.ci[1] * scale:+.2f}], p = {_p(st.p)}")
    if v.boot is not None:
        d, ci, p = v.boot
        parts.append(f"examples: paired bootstrap {d * scale:+.2f} [{ci[0] * scale:+.2f}, {ci[1] * scale:+.2f}], "
                     f"p = {_p(p)}")  # fmt: skip
    learned = []
    for name, t in ((label, v.learned[0]), (ref_label, v.learned[1])):
        if t is None or t.not_learned is None:
            learned.append(f"{name} untested")
        else:
            learned.append(f"{name} {'did not learn' if t.not_learned else 'learned'} (p = {_p(t.p)})")
    parts.append("vs trivial baseline: " + ", ".join(learned))
    text = "; ".join(parts + list(v.notes))
    return f"<li><strong>{esc(label)} vs {esc(ref_label)}</strong>: {word}. {esc(text)}.</li>"


def verdict_legend(view: GroupView) -> str:
    if not view.verdicts:
        ref = view.group.reference
        return ("No verdict: this budget has " + ("no challenger to compare with the reference." if ref
                else "no run of the reference method (Adapter.is_reference) to compare with."))  # fmt: skip
    counts: dict[str, int] = {}
    for v, *_ in view.verdicts:
        counts[v.word] = counts.get(v.word, 0) + 1
    said = ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
    seeds = max(len(v.seeds) for v, *_ in view.verdicts)
    return (
        f"{len(view.verdicts)} comparison(s) against {view.verdicts[0][2]} at this budget: {said}. "
        f"'{HELPS}'/'{HURTS}' needs every test that ran to reject at α = 0.05 (the seed t-test runs with 3+ seeds; "
        f"here at most {seeds}); '{TIES}' means the difference is within the noise; '{NEITHER}' means neither "
        f"side beat the trivial baseline ({view.baseline_note}), so the difference is noise around it."
    )


# --- 2. ranks -----------------------------------------------------------------------------------------------------


def ranks_part(rv: RankView) -> str:
    s = rv.summary
    rows = "".join(
        f"<tr><td>{esc(k.category)}</td><td class='num'>{k.final:.1f}</td><td class='num'>{_num(k.initial, '.0f')}"
        f"</td><td class='num'>{(k.final / s.final_total if s.final_total else math.nan):.0%}</td>"
        f"<td class='num'>{k.zero_layers}</td></tr>"
        for k in s.by_kind
    )
    table = (
        "<table><caption>rank by module type, summed over layers (mean over seeds)</caption><thead><tr><th>type</th>"
        "<th class='num'>final</th><th class='num'>initial</th><th class='num'>share</th>"
        f"<th class='num'>layers at 0</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    ref = (
        f"{rv.reference_label}: uniform rank {rv.reference_rank} on each of the {s.n_matrices} matrices"
        if rv.reference_rank is not None
        else f"{rv.reference_label}: one uniform rank on every matrix (rank not recorded)"
    )
    side = f'<div class="side"><div>{img(rv.heatmap)}</div><div><p><strong>{esc(ref)}</strong></p>{table}</div></div>'
    return f"<h3>{esc(rv.arm.label)}</h3>{side}{legend(ranks_legend(rv))}"


def ranks_legend(rv: RankView) -> str:
    s = rv.summary
    n = len(s.seeds)
    parts = [
        f"{rv.arm.label} kept {s.final_total:.1f} of {s.initial_total:.0f} initial triplets on {s.n_matrices} matrices "
        f"(mean over {n} seed(s); the heatmap is seed {s.seeds[0]})."
    ]
    if not math.isnan(s.top_share):
        even = s.top_k / s.n_matrices
        parts.append(f"The top {TOP_FRACTION:.0%} of matrices ({s.top_k}) hold {s.top_share:.0%} of the retained rank "
                     f"(an even spread would give {even:.0%}).")  # fmt: skip
    if s.zero_matrices:
        parts.append(f"{len(s.zero_matrices)} matrix(es) ended at rank 0 in at least one seed"
                     + (f"; layer(s) {', '.join(map(str, s.empty_layers))} left wholly unadapted in some seed."
                        if s.empty_layers else "; no layer was left wholly unadapted."))  # fmt: skip
    else:
        parts.append("No matrix was pruned to rank 0.")
    top = max(s.by_kind, key=lambda k: k.final, default=None)
    if top is not None and s.final_total:
        parts.append(f"Most rank went to {top.category} ({top.final / s.final_total:.0%}).")
    if s.stability is None:
        parts.append("Stability over seeds: not measurable (needs 2+ seeds whose ranks are not all equal).")
    else:
        how = "stable" if s.stability >= 0.7 else "partly stable" if s.stability >= 0.3 else "not stable"
        parts.append(f"Stability over seeds: mean pairwise Spearman correlation of per-matrix ranks {s.stability:.2f} "
                     f"over {s.stability_pairs} pair(s): the allocation is {how} across seeds.")  # fmt: skip
    return " ".join(parts)


# --- 4. detectors, 5. cost ----------------------------------------------------------------------------------------


def flags_table(flags: Sequence[Flag], labels: dict[str, str]) -> str:
    def state(f: Flag) -> str:
        if f.fired is None:
            return '<span class="flag-na">not checked</span>'
        return '<span class="flag-on">FLAGGED</span>' if f.fired else '<span class="flag-off">ok</span>'

    rows = "".join(
        f"<tr><td>{esc(labels.get(f.method, f.method))}</td><td>{esc(f.detector)}</td><td>{state(f)}</td>"
        f"<td>{esc(f.evidence)}</td></tr>"
        for f in flags
    )
    return ("<table><thead><tr><th>method</th><th>detector</th><th>state</th><th>evidence</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")  # fmt: skip


def flags_legend(flags: Sequence[Flag], labels: dict[str, str]) -> str:
    on = [f for f in flags if f.fired]
    unchecked = sum(f.fired is None for f in flags)
    head = f"{len(flags)} check(s), {len(on)} flagged, {unchecked} not checkable with these records."
    if on:
        head += " Flagged: " + "; ".join(f"{labels.get(f.method, f.method)} {f.detector}" for f in on) + "."
    return head + (
        " Slow start counts optimizer steps until a 3-point trailing mean of the training loss falls "
        "below 90% of its first 3 points; seed spread fires above 1.5x the reference's std."
    )


def cost_table(rows: Sequence[CostRow], ref: CostRow | None) -> str:
    def rel(v, base) -> str:
        return f" ({v / base:.2f}x)" if v and base else ""

    body = ""
    for r in rows:
        b = ref if ref is not None and r is not ref else None
        mib = None if r.peak_bytes is None else r.peak_bytes / 2**20
        body += (
            f"<tr><td>{esc(r.arm.label)}</td><td class='num'>{_num(r.step_ms)}{rel(r.step_ms, b and b.step_ms)}</td>"
            f"<td class='num'>{_num(r.tokens_s, ',.0f')}{rel(r.tokens_s, b and b.tokens_s)}</td>"
            f"<td class='num'>{_num(mib, ',.0f')}{rel(r.peak_bytes, b and b.peak_bytes)}</td>"
            f"<td class='num'>{_num(r.adapter_peak, ',.0f')}</td><td class='num'>{_num(r.adapter, ',.0f')}</td></tr>"
        )
    kinds = ", ".join(sorted({r.memory_kind for r in rows if r.memory_kind}))
    return (
        "<table><thead><tr><th>method</th><th class='num'>step ms (median)</th><th class='num'>tokens/s</th>"
        f"<th class='num'>peak MiB ({esc(kinds or 'n/a')})</th><th class='num'>initial adapter params</th>"
        f"<th class='num'>final adapter params</th></tr></thead><tbody>{body}</tbody></table>"
    )


def cost_legend(rows: Sequence[CostRow], ref: CostRow | None, ema_lines: Sequence[str]) -> str:
    parts = []
    if ref is not None:
        for r in rows:
            if r is ref:
                continue
            bits = []
            if r.step_ms and ref.step_ms:
                bits.append(f"{r.step_ms / ref.step_ms:.2f}x the step time")
            if r.peak_bytes and ref.peak_bytes:
                diff = (r.peak_bytes - ref.peak_bytes) / 2**20
                bits.append(f"{diff:+,.0f} MiB peak memory")
            if bits:
                parts.append(f"{r.arm.label}: {' and '.join(bits)} of {ref.arm.label}.")
    if any(r.memory_kind == "process_max_rss" for r in rows):
        parts.append("Peak memory here is the process's maximum RSS (CPU runs): it includes the model and the "
                     "interpreter, so differences of a few MiB are within its noise.")  # fmt: skip
    parts += list(ema_lines)
    mean_over = max((len(r.arm.records) for r in rows), default=0)
    parts.append(f"Means over up to {mean_over} seed(s) per method.")
    return " ".join(parts)


# --- the page -----------------------------------------------------------------------------------------------------


def group_html(view: GroupView) -> str:
    g = view.group
    labels = {a.method: a.label for a in g.arms}
    out = [f'<h2 id="{g.key}">{esc(g.title)}</h2>']

    def part(name: str, body: str) -> None:
        out.append(f'<section class="part" id="{name}-{g.key}" data-section="{name}"><h3>{TITLES[name]}</h3>'
                   f"{body}</section>")  # fmt: skip

    lines = "".join(verdict_line(v, a, b, view.scale, view.unit, view.metric) for v, a, b in view.verdicts)
    part("verdict", (f"<ul>{lines}</ul>" if lines else "") + legend(verdict_legend(view)))
    if view.ranks:
        part("ranks", "".join(ranks_part(rv) for rv in view.ranks))
    else:
        part("ranks", legend("No method at this budget recorded a rank allocation (final ranks per matrix)."))
    if view.schedules:
        part("schedule", "".join(f"<h3>{esc(s.arm.label)}</h3>{img(s.figure)}{legend(s.legend)}"
                                 for s in view.schedules))  # fmt: skip
    else:
        part("schedule", legend("No method at this budget recorded a budget schedule."))
    part(
        "detectors", flags_table(view.flags, labels) + img(view.loss_figure) + legend(flags_legend(view.flags, labels))
    )
    ref = next((r for r in view.cost if r.arm.role == "reference"), None)
    part("cost", cost_table(view.cost, ref) + legend(cost_legend(view.cost, ref, view.ema_lines)))
    part("leaderboard", view.table_html)
    return "\n".join(out)


def render(title: str, intro: str, views: Sequence[GroupView], pareto: Sequence[tuple[str, Figure | None, str]]) -> str:
    nav = []
    for v in views:
        g = v.group
        words = "; ".join(f"{a} {vd.word} vs {b}" for vd, a, b in v.verdicts) or "no verdict"
        links = " · ".join(f'<a href="#{s}-{g.key}">{TITLES[s].split(". ")[1]}</a>' for s in SECTIONS)
        nav.append(f'<li><a href="#{g.key}">{esc(g.title)}</a>: {esc(words)}<br><small>{links}</small></li>')
    nav += [f'<li><a href="#pareto-{esc(t)}">Pareto plot: {esc(t)}</a></li>' for t, *_ in pareto]
    pareto_html = "".join(
        f'<section class="part" id="pareto-{esc(t)}" data-section="pareto"><h2>Pareto: {esc(t)}</h2>{img(fig)}'
        f"{legend(text)}</section>"
        for t, fig, text in pareto
    )
    return "\n".join([
        "<!doctype html>", '<html lang="en">', '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
        f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>", f"<nav><ul>{''.join(nav)}</ul></nav>",
        *(group_html(v) for v in views), pareto_html, "</body>", "</html>",
    ]) + "\n"  # fmt: skip


def write(path: Path, text: str) -> Path:
    from peftbench.records import atomic_write_text

    atomic_write_text(path, text)
    return path
