"""Validating an archive: is it fresh, are its latest values there, has it gaps, is it
still what its spec declares.

Four checks, each cheap enough to run after every scheduled append (O(gaps) plus one
window of values, never O(labels) unless something is already wrong):

- **freshness**: the newest label holding data lags ``now`` by at most the spec's
  ``max_delay``;
- **NaN fraction**: in the most recent window (by default the labels of one chunk along
  the append dimension), per data variable, the fraction of missing values among the
  labels that hold data stays within the spec's ``max_nan_fraction`` (its own or "*");
- **gaps**: labels on the axis without data (read from chunk presence and values:
  tasks/coverage.py; a backfill can fill them), and labels the axis skips against the
  expected step (the spec's, or the one inferred from the first labels; a backfill cannot
  add labels inside the axis);
- **structure**: the group's arrays (dims, dtype, units, chunks) and time encoding equal
  the spec's.

Without a stored spec, freshness and NaN fractions are reported without bounds, gaps are
judged against the inferred step, and structure is skipped with a note. This module
knows nothing of Prefect: flows/validate.py publishes the result and emits its events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from tasks.coverage import Coverage, Label, coverage, full_coverage, labels_at
from tasks.errors import GroupNotFoundError, PlanError
from tasks.spec import (
    IRREGULAR,
    DatasetSpec,
    infer_step,
    label_grid,
    labels_in,
    next_labels,
    read_spec,
)
from tasks.stored import StoredGroup

if TYPE_CHECKING:
    import icechunk

__all__ = [
    "CheckResult",
    "Freshness",
    "GapFinding",
    "NanFraction",
    "Validation",
    "freshness",
    "validate",
]

Status = Literal["passed", "failed", "skipped"]
CheckName = Literal["freshness", "nan fraction", "gaps", "structure", "coverage record"]

# labels read from the start of the axis to infer its step when no spec declares one
_STEP_SAMPLE = 100


@dataclass(frozen=True)
class CheckResult:
    """One line of a validation: what was checked, about what, and how it went."""

    check: CheckName
    subject: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Freshness:
    """How old the newest label holding data is, against the spec's ``max_delay``."""

    newest: Label | None
    lag: dt.timedelta | None
    max_delay: dt.timedelta | None

    @property
    def stale(self) -> bool:
        return self.max_delay is not None and (self.lag is None or self.lag > self.max_delay)


@dataclass(frozen=True)
class NanFraction:
    """The share of missing values of one variable in the most recent window."""

    variable: str
    fraction: float
    limit: float | None
    labels: int  # labels of the window that hold data (gap labels are the gap check's)

    @property
    def failed(self) -> bool:
        return self.limit is not None and self.fraction > self.limit


@dataclass(frozen=True)
class GapFinding:
    """Labels without data, as a range a backfill can be asked to fill: [start, end)."""

    first: Label
    last: Label
    count: int
    start: str  # the first missing label (ISO text for times)
    end: str  # the next stored label after the gap, or just after its last one
    # "no data": the labels are on the axis but hold no data (a backfill fills them);
    # "not on the axis": the axis skips labels of its step (a backfill cannot add them)
    kind: Literal["no data", "not on the axis"] = "no data"

    @property
    def fillable(self) -> bool:
        return self.kind == "no data"


@dataclass(frozen=True)
class Validation:
    """Everything one validation found, for a table, a plot and the events to emit."""

    group: str | None
    append_dim: str
    snapshot_id: str
    checked_at: dt.datetime
    spec: DatasetSpec | None
    step: str
    coverage: Coverage
    freshness: Freshness
    nan_fractions: tuple[NanFraction, ...]
    gaps: tuple[GapFinding, ...]
    # differences from the spec; None when there is no spec to compare with
    structure: tuple[str, ...] | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # with recompute: how the commit's coverage record differs from judging every label
    record_mismatch: str | None = None

    @property
    def checks(self) -> list[CheckResult]:
        rows = [self._freshness_row()]
        rows += [self._nan_row(n) for n in self.nan_fractions]
        rows += [
            CheckResult(
                "gaps",
                f"{g.first} … {g.last} ({g.count} labels)",
                "failed",
                g.kind
                + (
                    ": a backfill of [start, end) fills it"
                    if g.fillable
                    else f" of step {self.step}: rewrite the group to add them"
                ),
            )
            for g in self.gaps
        ]
        if not self.gaps:
            rows.append(
                CheckResult(
                    "gaps",
                    f"{self.coverage.n_labels} labels",
                    "passed",
                    f"every label holds data, on step {self.step}",
                )
            )
        if self.structure is None:
            rows.append(
                CheckResult(
                    "structure",
                    self._where,
                    "skipped",
                    "no spec is stored with the group (declare one with `icefloe spec init`)",
                )
            )
        else:
            rows += [CheckResult("structure", self._where, "failed", d) for d in self.structure]
            if not self.structure:
                rows.append(CheckResult("structure", self._where, "passed", "as the spec declares"))
        if self.record_mismatch is not None:
            rows.append(CheckResult("coverage record", self._where, "failed", self.record_mismatch))
        return rows

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def stale(self) -> bool:
        return self.freshness.stale

    def backfill_requests(self) -> list[dict[str, Any]]:
        """The payload of one backfill request per gap a backfill can fill."""
        return [
            {"start": g.start, "end": g.end, "group": self.group or "", "labels": g.count}
            for g in self.gaps
            if g.fillable
        ]

    @property
    def _where(self) -> str:
        return f"group {self.group!r}" if self.group else "the root group"

    def _freshness_row(self) -> CheckResult:
        f = self.freshness
        if f.newest is None:
            return CheckResult(
                "freshness",
                "newest label",
                "failed" if f.stale else "skipped",
                "no label holds data",
            )
        if f.lag is None:
            return CheckResult(
                "freshness", str(f.newest), "skipped", "the labels are not times: no age"
            )
        age = f"newest label with data {f.newest}, {_duration(f.lag)} old"
        if f.max_delay is None:
            return CheckResult("freshness", str(f.newest), "skipped", f"{age}; no max_delay set")
        status: Status = "failed" if f.stale else "passed"
        return CheckResult(
            "freshness", str(f.newest), status, f"{age}; max_delay {_duration(f.max_delay)}"
        )

    def _nan_row(self, n: NanFraction) -> CheckResult:
        text = f"{100 * n.fraction:.2f} % missing in the last {n.labels} labels with data"
        if n.limit is None:
            return CheckResult("nan fraction", n.variable, "skipped", f"{text}; no bound set")
        return CheckResult(
            "nan fraction",
            n.variable,
            "failed" if n.failed else "passed",
            f"{text}; bound {100 * n.limit:.2f} %",
        )

    # -- for people --------------------------------------------------------------------------

    def markdown(self) -> str:
        verdict = "passed" if self.ok else f"**failed** ({len(self.failed)} checks)"
        lines = [
            f"# Validation of {self._where} along {self.append_dim!r}: {verdict}",
            "",
            f"Snapshot `{self.snapshot_id}`, checked at {self.checked_at:%Y-%m-%d %H:%M:%S} UTC; "
            f"{self.coverage.n_present} of {self.coverage.n_labels} labels hold data"
            + (
                f", from {self.coverage.first_label} to {self.coverage.last_label}"
                if self.coverage.n_labels
                else ""
            )
            + f"; step {self.step}.",
            "",
            "| check | subject | status | detail |",
            "|---|---|---|---|",
        ]
        mark = {"passed": "passed", "failed": "**failed**", "skipped": "skipped"}
        lines += [
            f"| {c.check} | {c.subject} | {mark[c.status]} | {c.detail} |" for c in self.checks
        ]
        if requests := self.backfill_requests():
            lines += ["", "Backfills requested (start, end):", ""]
            lines += [f"- {r['start']} … {r['end']} ({r['labels']} labels)" for r in requests]
        lines += [f"\n_{note}_" for note in self.notes]
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """The coverage strip above the NaN fraction of each variable against its bound."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (strip, bars) = plt.subplots(
            2,
            1,
            figsize=(10, 2.2 + 0.3 * max(1, len(self.nan_fractions))),
            dpi=100,
            gridspec_kw={"height_ratios": [1, max(1, len(self.nan_fractions)) * 0.5]},
        )
        self.coverage.draw(strip)
        names = [n.variable for n in self.nan_fractions]
        values = [100 * n.fraction for n in self.nan_fractions]
        colours = ["#d62728" if n.failed else "#1f77b4" for n in self.nan_fractions]
        bars.barh(range(len(names)), values, color=colours)
        for i, n in enumerate(self.nan_fractions):
            if n.limit is not None:
                bars.plot([100 * n.limit] * 2, [i - 0.4, i + 0.4], color="black")
        bars.set_yticks(range(len(names)), names, fontsize=7)
        bars.invert_yaxis()
        bars.set_xlim(
            0, max([1.0, *values, *(100 * (n.limit or 0) for n in self.nan_fractions)]) * 1.1
        )
        bars.set_xlabel("% missing in the most recent window (bound: black line)")
        freshness = self._freshness_row()
        fig.suptitle(
            f"{'passed' if self.ok else 'FAILED'}: freshness {freshness.status} "
            f"({freshness.detail})",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _duration(delta: dt.timedelta) -> str:
    return str(pd.Timedelta(delta).floor("s"))


def validate(
    repo: icechunk.Repository,
    group: str | None = None,
    append_dim: str | None = None,
    *,
    branch: str = "main",
    now: dt.datetime | None = None,
    window: int | None = None,
    recompute: bool = False,
) -> Validation:
    """Validate ``group`` at the tip of ``branch``.

    ``append_dim`` defaults to the spec's (else "time"); ``now`` (UTC) to the present;
    ``window`` (labels) to one chunk along the append dimension. ``recompute`` judges the
    coverage label by label instead of reading the commit's record, and reports a record
    that differs.
    """
    snapshot = repo.lookup_branch(branch)
    session = repo.readonly_session(snapshot_id=snapshot)
    stored = StoredGroup(session.store, group)
    if stored.is_empty:
        raise GroupNotFoundError(
            f"{f'group {group!r}' if group else 'the root group'} of branch {branch!r} holds "
            "no arrays: there is nothing to validate yet (check the group, or let a first "
            "write create it)",
            group=group,
        )
    spec, notes = _stored_spec(session, group)
    dim = append_dim or (spec.append_dim if spec is not None else "time")
    if dim not in stored.arrays or stored.arrays[dim].dims != (dim,):
        raise PlanError(
            f"it has no coordinate {dim!r} to validate along (its dimensions: "
            f"{sorted(stored.sizes)}); pass one of them as append_dim",
            group=group,
        )
    recorded = coverage(repo, group, dim, snapshot_id=snapshot)
    found, mismatch = recorded, None
    if recompute:
        found = full_coverage(session, group, dim)
        if found != recorded:
            mismatch = (
                f"the commit's record says {recorded.n_present}/{recorded.n_labels} labels hold "
                f"data in {len(recorded.gaps)} gaps; judged label by label: "
                f"{found.n_present}/{found.n_labels} in {len(found.gaps)}"
            )
    checked_at = _naive_utc(now or dt.datetime.now(dt.UTC))
    step = _step(session, group, dim, spec, found)
    if spec is None:
        notes.append(
            f"no spec: the step {step} is inferred from the first labels, and no bound is set"
        )
    return Validation(
        group=group,
        append_dim=dim,
        snapshot_id=snapshot,
        checked_at=checked_at,
        spec=spec,
        step=step,
        coverage=found,
        freshness=_freshness(session, group, found, spec, checked_at),
        nan_fractions=tuple(_nan_fractions(stored, found, spec, window)),
        gaps=tuple(_gaps(session, stored, found, step)),
        structure=None if spec is None else tuple(_structure(stored, spec, dim)),
        notes=tuple(notes),
        record_mismatch=mismatch,
    )


def freshness(
    repo: icechunk.Repository,
    group: str | None = None,
    append_dim: str | None = None,
    *,
    branch: str = "main",
    now: dt.datetime | None = None,
) -> tuple[str, Freshness]:
    """The tip of ``branch`` and the freshness of ``group`` there, read in O(gaps) from the
    commit's coverage record: the one check whose outcome changes while nothing is written."""
    snapshot = repo.lookup_branch(branch)
    session = repo.readonly_session(snapshot_id=snapshot)
    spec, _ = _stored_spec(session, group)
    dim = append_dim or (spec.append_dim if spec is not None else "time")
    found = coverage(repo, group, dim, snapshot_id=snapshot)
    checked_at = _naive_utc(now or dt.datetime.now(dt.UTC))
    return snapshot, _freshness(session, group, found, spec, checked_at)


def _stored_spec(
    session: icechunk.Session, group: str | None
) -> tuple[DatasetSpec | None, list[str]]:
    """The group's spec, or None and a note saying why it cannot be read."""
    try:
        return read_spec(session.store, group), []
    except PlanError as err:
        return None, [f"the stored spec cannot be read: {err}"]


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
    moment = stamp.to_pydatetime()
    return moment


def _newest_with_data(found: Coverage) -> int | None:
    """The position of the last label holding data."""
    last = found.n_labels - 1
    if found.gaps and found.gaps[-1].stop == found.n_labels:
        last = found.gaps[-1].start - 1
    return last if last >= 0 else None


def _freshness(
    session: icechunk.Session,
    group: str | None,
    found: Coverage,
    spec: DatasetSpec | None,
    now: dt.datetime,
) -> Freshness:
    max_delay = spec.max_delay if spec is not None else None
    position = _newest_with_data(found)
    if position is None:
        return Freshness(None, None, max_delay)
    (newest,) = labels_at(session, group, found.append_dim, [position])
    try:
        lag = (pd.Timestamp(now) - pd.Timestamp(str(newest))).to_pytimedelta()
    except (TypeError, ValueError):  # numeric labels have no age
        return Freshness(str(newest), None, None)
    return Freshness(str(newest), lag, max_delay)


def _nan_fractions(
    stored: StoredGroup, found: Coverage, spec: DatasetSpec | None, window: int | None
) -> list[NanFraction]:
    dim = found.append_dim
    undecoded = stored.undecoded
    bounds = {v.attrs.get("bounds") for v in undecoded.variables.values()}
    names = [str(n) for n, v in undecoded.data_vars.items() if dim in v.dims and n not in bounds]
    if not names or not found.n_labels:
        return []
    newest = _newest_with_data(found)
    if window is None:  # one chunk of the first variable: what one append usually writes
        array = stored.arrays[names[0]]
        window = array.chunks[array.dims.index(dim)]
    # the window ends at the newest label with data; labels in gaps are the gap check's
    end = 0 if newest is None else newest + 1
    start = max(0, end - window)
    with_data = found.present_between(start, end)
    positions = np.flatnonzero(with_data) + start
    results = []
    for name in names:
        limit = spec.nan_fraction_limit(name) if spec is not None else None
        if not len(positions):
            results.append(NanFraction(name, 0.0, limit, 0))
            continue
        values = undecoded[name].isel({dim: positions}).values
        fraction = float(np.isnan(values).mean()) if values.dtype.kind in "fc" else 0.0
        results.append(NanFraction(name, fraction, limit, len(positions)))
    return results


def _step(
    session: icechunk.Session,
    group: str | None,
    dim: str,
    spec: DatasetSpec | None,
    found: Coverage,
) -> str:
    if spec is not None:
        return spec.step
    sample = labels_at(session, group, dim, range(min(found.n_labels, _STEP_SAMPLE)))
    return infer_step(sample)


def _gaps(
    session: icechunk.Session, stored: StoredGroup, found: Coverage, step: str
) -> list[GapFinding]:
    dim, n = found.append_dim, found.n_labels
    # the label after each gap ends it; a gap at the end of the axis ends just after itself
    after = [g.stop for g in found.gaps if g.stop < n]
    next_labels = dict(zip(after, labels_at(session, found.group, dim, after), strict=True))
    gaps = []
    for gap in found.gaps:
        if gap.stop in next_labels:
            end = _text(next_labels[gap.stop])
        else:
            (last,) = labels_at(session, found.group, dim, [gap.stop - 1])
            end = _text(_just_after(last, step))
        gaps.append(
            GapFinding(gap.first, gap.last, gap.count, _as_start(gap.first), end, "no data")
        )
    if step != IRREGULAR and n > 1:
        gaps += _off_axis(session, stored, found, step)
    return sorted(gaps, key=lambda g: g.start)


def _off_axis(
    session: icechunk.Session, stored: StoredGroup, found: Coverage, step: str
) -> list[GapFinding]:
    """Labels of the step between the first and last stored ones that the axis lacks.

    Counting the step's labels between the ends is O(1) reads; only an axis that has fewer
    labels than its step needs is read whole to name the missing ones.
    """
    dim = found.append_dim
    ends = labels_at(session, found.group, dim, [0, found.n_labels - 1])
    if _labels_on_step(ends[0], ends[1], step) <= found.n_labels:
        return []
    try:
        grid = label_grid(ends[0], ends[1], step)
    except (TypeError, ValueError):
        return []
    labels = stored.indexes[dim]
    missing = ~labels_in(grid, labels)
    runs, begun = [], None
    for i, absent in enumerate([*missing.tolist(), False]):
        if absent and begun is None:
            begun = i
        elif not absent and begun is not None:
            runs.append((begun, i))
            begun = None
    return [
        GapFinding(
            _text(grid[a]),
            _text(grid[b - 1]),
            b - a,
            _text(grid[a]),
            _text(grid[b]),
            "not on the axis",
        )
        for a, b in runs
    ]


def _labels_on_step(first: Any, last: Any, step: str) -> int:
    """How many labels of ``step`` lie in [first, last]: arithmetic for a fixed step (an
    hourly axis of 10⁶ labels is not built to be counted), the grid otherwise."""
    if isinstance(first, pd.Timestamp | np.datetime64):
        try:
            fixed = pd.Timedelta(pd.tseries.frequencies.to_offset(step))
            return int((pd.Timestamp(last) - pd.Timestamp(first)) // fixed) + 1
        except (TypeError, ValueError):  # months, years: no fixed length
            pass
    try:
        return len(label_grid(first, last, step))
    except (TypeError, ValueError):
        return 0


def _structure(stored: StoredGroup, spec: DatasetSpec, dim: str) -> list[str]:
    # labels are not read: start and step are not structure (and the gap check has them)
    actual = DatasetSpec.from_group(stored, dim, labels=pd.Index([]))
    return spec.diff(actual, structure_only=True)


def _text(label: Any) -> str:
    if isinstance(label, pd.Timestamp | np.datetime64):
        return str(pd.Timestamp(label).isoformat())
    if hasattr(label, "isoformat"):
        return str(label.isoformat())
    return str(label)


def _as_start(label: Label) -> str:
    # recorded times read "2020-01-01 00:00:00" (any calendar): ISO 8601 puts a T there
    return label.replace(" ", "T", 1) if isinstance(label, str) else str(label)


def _just_after(label: Any, step: str) -> Any:
    """The end of a range that includes ``label`` and nothing later: the next label of the
    step, or a value just after it."""
    if step != IRREGULAR:
        try:
            return next_labels(label, 1, step)[0]
        except (TypeError, ValueError):
            pass
    if isinstance(label, pd.Timestamp | np.datetime64):
        return pd.Timestamp(label) + pd.Timedelta(1, "us")
    if hasattr(label, "isoformat"):  # cftime
        return label + dt.timedelta(microseconds=1)
    return label + (1 if isinstance(label, int | np.integer) else 1e-9 * max(1.0, abs(label)))
