"""What `peftbench report` reads: the records of a results directory grouped per (task, budget, profile), each
method's runs one per seed, and the role each method plays on the page.

Roles come from the adapters' interfaces and from what the records hold, never from method names: the reference
is the method with `Adapter.is_reference` (LoRA), unbudgeted methods have `Adapter.budgeted` False (full FT), and a
method is *adaptive* when its records carry a rank allocation (diagnostics with final ranks or a budget curve,
which AdaLoRA writes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.harness.report.baselines import Baseline, training_labels, trivial_baseline
from peftbench.records import NO_BUDGET, RunRecord, iter_records, runs_dir

log = logging.getLogger(__name__)

REFERENCE = "reference"
ADAPTIVE = "adaptive"
OTHER = "other"
UNBUDGETED = "unbudgeted"


@dataclass(frozen=True)
class Arm:
    """One method's runs in a group: the successful record per seed (newest, when a seed ran twice) and the
    failed ones (kept: a failed seed is evidence for the detectors)."""

    method: str
    display: str
    role: str
    records: tuple[RunRecord, ...]
    failed: tuple[RunRecord, ...] = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.config.seed for r in self.records)

    def by_seed(self) -> dict[int, RunRecord]:
        return {r.config.seed: r for r in self.records}

    @property
    def label(self) -> str:
        return self.display or self.method


@dataclass(frozen=True)
class Group:
    """The runs one page section answers for: one task, one budget (unbudgeted methods ride along), one profile."""

    task: str
    budget: str
    profile: str
    requested: int | None
    arms: tuple[Arm, ...]

    @property
    def key(self) -> str:
        """A stable HTML id and file-name stem."""
        raw = f"{self.task}-{self.budget}-{self.profile}"
        return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw)

    @property
    def title(self) -> str:
        at = f" @ {self.budget}" if self.budget != NO_BUDGET else ""
        return f"{self.task}{at} (profile {self.profile})"

    @property
    def reference(self) -> Arm | None:
        return next((a for a in self.arms if a.role == REFERENCE and a.records), None)

    def role(self, role: str) -> list[Arm]:
        return [a for a in self.arms if a.role == role]

    @property
    def challengers(self) -> list[Arm]:
        """Budgeted methods other than the reference, adaptive ones first: what the verdicts compare."""
        return self.role(ADAPTIVE) + self.role(OTHER)


def is_adaptive(record: RunRecord) -> bool:
    d = record.diagnostics
    return bool(d.get("final_ranks") or d.get("budget_curve"))


def _adapter_facts(method: str) -> tuple[str, bool, bool]:
    """(display name, budgeted, is_reference); a method whose plugin is not installed here is a plain budgeted one."""
    from peftbench import registry

    try:
        cls = registry.adapters.get(method)
    except UsageError:
        return method, True, False
    return cls.display_name or method, cls.budgeted, cls.is_reference


def _arm(method: str, records: list[RunRecord]) -> Arm:
    display, budgeted, reference = _adapter_facts(method)
    ok = [r for r in records if r.ok]
    newest: dict[int, RunRecord] = {}
    for r in sorted(ok, key=lambda r: (r.created, str(r.path))):
        newest[r.config.seed] = r
    if len(newest) < len(ok):
        log.warning("%s: %d seeds ran more than once; the newest record of each is used", method, len(ok) - len(newest))
    if not budgeted:
        role = UNBUDGETED
    elif reference:
        role = REFERENCE
    elif any(is_adaptive(r) for r in ok):
        role = ADAPTIVE
    else:
        role = OTHER
    failed = tuple(r for r in records if not r.ok)
    return Arm(method, display, role, tuple(newest[s] for s in sorted(newest)), failed)


def load_groups(results: Path, tasks: list[str] | None = None) -> list[Group]:
    """Every (task, budget, profile) of the records under `results`; a one-line UsageError when there is nothing
    to report on (no records at all, or none of the requested tasks)."""
    results = Path(results)
    if not runs_dir(results).is_dir():
        raise UsageError(f"no run records under {runs_dir(results)}; pass --results DIR of a sweep")
    records = [r.record for r in iter_records(results) if r.record is not None]
    if not records:
        raise UsageError(f"no readable run records under {runs_dir(results)}; run a sweep first")
    found = sorted({r.config.task for r in records})
    if tasks:
        records = [r for r in records if r.config.task in tasks]
        if not records:
            raise UsageError(f"no records of task(s) {', '.join(tasks)} under {results}; it holds {', '.join(found)}")
    cells: dict[tuple[str, str], dict[str, dict[str, list[RunRecord]]]] = {}
    for r in records:
        cells.setdefault((r.config.task, r.config.profile or "-"), {}).setdefault(r.budget_spec, {}).setdefault(
            r.config.method, []
        ).append(r)
    groups = []
    for (task, profile), by_budget in sorted(cells.items()):
        loose = by_budget.get(NO_BUDGET, {})
        # Unbudgeted methods (full FT) are the same runs at every budget; a budgeted method run at its defaults
        # (no --budgets) has no budget to be compared at, so those runs get a group of their own.
        riders = {m: recs for m, recs in loose.items() if not _adapter_facts(m)[1]}
        budgets = sorted(b for b in by_budget if b != NO_BUDGET)
        if not budgets or len(riders) < len(loose):
            budgets.append(NO_BUDGET)
        for budget in budgets:
            methods = dict(by_budget.get(budget, {}))
            for method, recs in riders.items():
                methods.setdefault(method, recs)
            arms = tuple(_arm(m, recs) for m, recs in sorted(methods.items()))
            requested = next(
                (r.config.budget_requested for recs in methods.values() for r in recs if r.config.budget_requested),
                None,
            )
            groups.append(Group(task, budget, profile, requested, arms))
    return groups


def references_of(spec, records: list[RunRecord]) -> list | None:
    """The primary split's references, read from the predictions file beside the first record that has one."""
    from peftbench.harness.report.compare import load_predictions, primary_split

    for r in records:
        if r.path is None:
            continue
        try:
            return load_predictions(r.path, primary_split(spec))[1]
        except UsageError:
            continue
    return None


def baseline_for(spec, records: list[RunRecord]) -> Baseline:
    """The task's trivial baseline on the evaluation rows these runs were scored on, from the same training rows
    they trained on; a Baseline without predictions (and the reason) when the data or the references are missing."""
    from peftbench.harness.run.data import load_rows

    refs = references_of(spec, records)
    if not refs:
        return Baseline(spec.name, "none", {}, None, "no stored predictions to read the evaluation references from")
    cfg = records[0].config
    try:
        labels = training_labels(spec, load_rows(spec, cfg.data, spec.train_split, cfg.train.train_rows))
        return trivial_baseline(spec, labels, refs)
    except Exception as e:  # noqa: BLE001 - offline hub data, a moved directory: the page says why, it does not fail
        log.warning("%s: no trivial baseline (%s: %s)", spec.name, type(e).__name__, e)
        return Baseline(spec.name, "none", {}, None, f"training rows of {cfg.data!r} unavailable here ({e})")
