"""What a benchmark reports: rows (our figure, its reference, the ratio) and targets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import median


@dataclass(frozen=True)
class Row:
    """One measurement next to its reference.

    `ratio` is always our *speed* relative to the reference: throughput ÷ throughput, or the
    reference's time ÷ ours. 1.00 means as fast as the reference, 0.50 half as fast, 2.00
    twice as fast, whatever the unit.
    """

    label: str
    ours: float | None  # None: nothing was measured (e.g. no message arrived)
    unit: str
    reference: float | None = None
    reference_label: str = ""
    lower_is_better: bool = False  # times and latencies
    chart: bool = False  # show this row in the chart
    group: str = ""  # the chart panel, when not the benchmark's own
    short: str = ""  # the label in the chart, when not `label`
    # With --repeat: every run's ratio (ours and reference are then the medians).
    spread: tuple[float, ...] = ()

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.reference is None or self.ours <= 0 or self.reference <= 0:
            return None
        return self.reference / self.ours if self.lower_is_better else self.ours / self.reference


@dataclass(frozen=True)
class Target:
    """A goal from the performance issue, and whether this run met it."""

    description: str
    value: float | None
    threshold: float
    at_least: bool = True
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold


@dataclass
class Result:
    """Everything one benchmark found; `error` is set when it could not run to the end."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


def merge(runs: list[Result]) -> Result:
    """One result from the same benchmark run several times (`--repeat`).

    Ours and the reference become the medians over the runs, each target's value too; each
    row keeps every run's own ratio (each measured next to its reference in that run).
    """
    first = runs[0]
    if len(runs) == 1:
        return first
    rows = []
    for row in first.rows:
        same = [found for run in runs if (found := run.row(row.label)) is not None]
        ours = [r.ours for r in same if r.ours is not None]
        references = [r.reference for r in same if r.reference is not None]
        rows.append(
            replace(
                row,
                ours=median(ours) if ours else None,
                reference=median(references) if references else None,
                spread=tuple(r.ratio for r in same if r.ratio is not None),
            )
        )
    targets = []
    for target in first.targets:
        values = [
            t.value
            for run in runs
            for t in run.targets
            if t.description == target.description and t.value is not None
        ]
        targets.append(replace(target, value=median(values) if values else None))
    errors = [run.error for run in runs if run.error]
    return Result(
        first.name,
        first.title,
        rows,
        targets,
        [
            *first.notes,
            f"Median of {len(runs)} runs; a ratio is followed by its lowest and highest run.",
        ],
        errors[0] if errors else None,
        sum(run.seconds for run in runs),
    )
