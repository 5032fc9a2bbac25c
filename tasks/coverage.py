"""Which labels along the append dimension hold data, and where the gaps are.

A label counts as present when every data variable along the dimension (bounds
variables aside: they are written with the labels) has the chunk that holds it, and
one of them has a value there that is not its fill value. The chunk manifest answers
most of it without reading data (a backfill extends arrays first, leaving their new
chunks absent); values are read only inside existing chunks, one variable after the
other and only for labels still undecided, so a chunk that a window filled partly is
judged label by label.

Judging every label is O(labels): a scheduled append into an archive of 10⁶ labels must
not pay that after each commit. So every icefloe commit records the coverage it leaves
behind in its ``icefloe`` metadata block (``coverage``: per group, the number of labels
and the gaps as position ranges with their first and last labels), computed from its
parent's record by re-judging only the positions the write touched
(``coverage_record``). Reading the coverage of a snapshot (``coverage``) is then O(gaps);
it is judged in full only when the snapshot carries no record (a commit made outside
icefloe) or the record does not match the stored labels.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from tasks.stored import StoredArray, StoredGroup, array_path

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

    import icechunk

    from tasks.plan import WritePlan

__all__ = [
    "RECORD_KEY",
    "Coverage",
    "CoverageChange",
    "Gap",
    "coverage",
    "coverage_record",
    "full_coverage",
    "labels_at",
    "recorded_coverage",
]

Label = str | int | float
"""A label as the record keeps it: times as text (``2020-01-01 00:00:00``), numbers as is."""

RECORD_KEY = "coverage"
"""Where the record sits in a commit's ``icefloe`` metadata block."""


@dataclass(frozen=True)
class Gap:
    """Labels at positions [start, stop) along the dimension that hold no data."""

    start: int
    stop: int
    first: Label
    last: Label

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Coverage:
    """Presence of data per label along ``append_dim``: its length and its gaps."""

    group: str | None
    append_dim: str
    n_labels: int
    first_label: Label | None
    last_label: Label | None
    gaps: tuple[Gap, ...] = ()

    @property
    def n_present(self) -> int:
        return self.n_labels - sum(g.count for g in self.gaps)

    def present(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """One flag per label (O(labels): for tests and small archives)."""
        return self.present_between(0, self.n_labels)

    def present_between(self, start: int, stop: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """One flag per position in [start, stop): O(stop - start + gaps)."""
        mask = np.ones(max(0, stop - start), dtype=bool)
        for gap in self.gaps:
            if gap.stop > start and gap.start < stop:
                mask[max(gap.start, start) - start : min(gap.stop, stop) - start] = False
        return mask

    def missing_between(self, start: Any, end: Any) -> bool:
        """Whether any stored label in [start, end) lacks data, or none is stored there."""
        if self.first_label is None or self.last_label is None:
            return True
        first, last = _comparable(self.first_label, start), _comparable(self.last_label, start)
        if end <= first or start > last:
            return True
        return any(
            _comparable(g.first, start) < end and _comparable(g.last, start) >= start
            for g in self.gaps
        )

    # -- the record in a commit's metadata ---------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "append_dim": self.append_dim,
            "labels": self.n_labels,
            "first": self.first_label,
            "last": self.last_label,
            "gaps": [[g.start, g.stop, g.first, g.last] for g in self.gaps],
        }

    @classmethod
    def from_record(cls, group: str | None, record: Mapping[str, Any]) -> Coverage:
        return cls(
            group=group,
            append_dim=str(record["append_dim"]),
            n_labels=int(record["labels"]),
            first_label=record["first"],
            last_label=record["last"],
            gaps=tuple(Gap(int(a), int(b), first, last) for a, b, first, last in record["gaps"]),
        )

    # -- for people --------------------------------------------------------------------------

    def missing_in(self, windows: Sequence[tuple[Any, Any]]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """``missing_between`` of many [start, end) windows at once: a binary search in the
        gaps per window, O((windows + gaps) · log gaps), not a pass over the gaps each."""
        if not len(windows):
            return np.zeros(0, dtype=bool)
        if self.first_label is None or self.last_label is None:
            return np.ones(len(windows), dtype=bool)
        like = windows[0][0]
        first, last = _comparable(self.first_label, like), _comparable(self.last_label, like)
        gap_firsts = [_comparable(g.first, like) for g in self.gaps]
        gap_lasts = [_comparable(g.last, like) for g in self.gaps]  # sorted: gaps are disjoint
        missing = np.zeros(len(windows), dtype=bool)
        for i, (start, end) in enumerate(windows):
            if end <= first or start > last:
                missing[i] = True
                continue
            k = bisect.bisect_left(gap_lasts, start)  # the first gap ending at or after start
            missing[i] = k < len(gap_firsts) and gap_firsts[k] < end
        return missing

    def markdown(self) -> str:
        where = f"group {self.group!r}" if self.group else "the root group"
        lines = [
            f"# Coverage of {where} along {self.append_dim!r}",
            "",
            f"{self.n_present} of {self.n_labels} labels hold data"
            + (f", from {self.first_label} to {self.last_label}" if self.n_labels else ""),
            "",
            "| gap | first label | last label | labels |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {i + 1} | {g.first} | {g.last} | {g.count} |" for i, g in enumerate(self.gaps)
        ]
        if not self.gaps:
            lines.append("| - | no gaps | | 0 |")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = f"{self.n_present}/{self.n_labels} labels along {self.append_dim!r} hold data"
        if not self.n_labels:
            return head
        missing = self._missing_per_cell(min(60, self.n_labels))
        bar = "".join("█" if m == 0 else ("▒" if m < size else "·") for m, size in missing)
        body = [head, f"{self.first_label}  {bar}  {self.last_label}"]
        body += [f"  gap: {g.first} … {g.last} ({g.count} labels)" for g in self.gaps] or [
            "  no gaps"
        ]
        return "\n".join(body)

    def _missing_per_cell(self, cells: int) -> list[tuple[int, int]]:
        """(missing labels, labels) in each of ``cells`` equal parts of the axis: O(gaps + cells)."""
        # the cells of np.array_split: the first n % cells are one label longer
        size, longer = divmod(self.n_labels, cells)
        sizes = np.full(cells, size, dtype=np.int64)
        sizes[:longer] += 1
        edges = np.concatenate([[0], np.cumsum(sizes)])
        before = _missing_before(self.gaps, edges)
        return [
            (int(before[i + 1] - before[i]), int(edges[i + 1] - edges[i])) for i in range(cells)
        ]

    def plot(self, path: str) -> None:
        """A PNG strip: data in blue, gaps in red. Drawn from the gaps, never per label."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 1.6), dpi=100)
        self.draw(ax)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def draw(self, ax: Any) -> None:
        """The strip on a matplotlib axis (one image column per pixel, red when any label in
        it lacks data): O(gaps + columns)."""
        import matplotlib

        n = self.n_labels
        columns = min(max(n, 1), 1000)
        strip = (
            np.array([[float(m == 0) for m, _ in self._missing_per_cell(columns)]])
            if n
            else np.ones((1, 1))
        )
        colours = matplotlib.colors.ListedColormap(["#d62728", "#1f77b4"])
        ax.imshow(strip, aspect="auto", cmap=colours, vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([])
        if n:
            # the ends, and where the first gaps begin
            marks = {0: self.first_label, columns - 1: self.last_label}
            for gap in self.gaps[:4]:
                marks.setdefault(min(columns - 1, gap.start * columns // n), gap.first)
            ticks = sorted(marks)
            ax.set_xticks(ticks, [str(marks[t])[:16] for t in ticks], fontsize=7)
        ax.set_title(
            f"{self.append_dim}: {self.n_present}/{n} labels hold data, {len(self.gaps)} gaps (red)"
        )


def _comparable(label: Label, like: Any) -> Any:
    """A recorded label in the type of ``like`` (times are recorded as text)."""
    if isinstance(label, str) and isinstance(like, dt.datetime | np.datetime64 | str):
        return pd.Timestamp(label)
    return label


def _missing_before(gaps: Sequence[Gap], positions: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """For each position p, how many labels before p lack data (gaps sorted, disjoint)."""
    if not gaps:
        return np.zeros(len(positions), dtype=np.int64)
    starts = np.array([g.start for g in gaps])
    stops = np.array([g.stop for g in gaps])
    done = np.concatenate([[0], np.cumsum(stops - starts)])
    # the gaps that start before p: all but the last of them end before p too
    k = np.searchsorted(starts, positions, side="left")
    last = np.maximum(k - 1, 0)
    inside = np.where(k > 0, np.minimum(positions, stops[last]) - starts[last], 0)
    return np.where(k > 0, done[last] + inside, 0)


# -- judging labels -------------------------------------------------------------------------------


def full_coverage(
    session: icechunk.Session, group: str | None = None, append_dim: str = "time"
) -> Coverage:
    """The coverage of ``group`` along ``append_dim``, every label judged (O(labels))."""
    judge = _Judge(session, group, append_dim)
    return judge.coverage(judge.gaps(0, judge.n_labels))


def _updated(
    previous: Coverage,
    session: icechunk.Session,
    start: int,
    stop: int,
    *,
    written: bool = False,
) -> Coverage:
    """``previous`` with positions [start, stop) judged again in ``session``, where the
    labels from ``previous.n_labels`` on are new; the rest is carried over. ``written``:
    the write filled [start, stop) from its source, so only the positions around it (new
    labels someone else added meanwhile) are read."""
    judge = _Judge(session, previous.group, previous.append_dim)
    n = judge.n_labels
    source = (max(0, start), min(stop, n)) if written else (0, 0)
    if n != previous.n_labels:
        start, stop = min(start, previous.n_labels), n
    start, stop = max(0, start), min(stop, n)
    if stop <= start:
        return previous
    kept: list[tuple[int, int]] = []
    for gap in previous.gaps:
        if gap.stop <= start or gap.start >= stop:
            kept.append((gap.start, gap.stop))
            continue
        if gap.start < start:
            kept.append((gap.start, start))
        if gap.stop > stop:
            kept.append((stop, gap.stop))
    judged = [
        (g.start, g.stop)
        for a, b in ((start, max(start, source[0])), (max(start, source[1]), stop))
        if b > a
        for g in judge.gaps(a, b)
    ]
    runs = sorted(kept + judged)
    merged: list[tuple[int, int]] = []
    for a, b in runs:
        if merged and merged[-1][1] >= a:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    known = {
        **{g.start: g.first for g in previous.gaps},
        **{g.stop - 1: g.last for g in previous.gaps},
    }
    return judge.coverage(judge.named(merged, known))


class _Judge:
    """Judges positions of one group's labels in a session, reading only what it needs."""

    def __init__(self, session: icechunk.Session, group: str | None, append_dim: str) -> None:
        self.session, self.group, self.dim = session, group, append_dim
        self.stored = StoredGroup(session.store, group)
        axis = self.stored.arrays.get(append_dim)
        if axis is None or axis.dims != (append_dim,):
            raise ValueError(
                f"the group has no {append_dim!r} coordinate (it has "
                f"{sorted(n for n, a in self.stored.arrays.items() if a.dims == (n,))}); "
                "pass the append dimension as append_dim"
            )
        self.n_labels = axis.shape[0]

    def coverage(self, gaps: Iterable[Gap]) -> Coverage:
        ends = self.label_list([0, self.n_labels - 1]) if self.n_labels else [None, None]
        return Coverage(self.group, self.dim, self.n_labels, ends[0], ends[1], tuple(gaps))

    def values(self, positions: Sequence[int]) -> pd.Index:
        """The labels at ``positions``, decoded, read from the coordinate (only the chunks
        holding them)."""
        if not len(positions):
            return pd.Index([])
        # times other than the labels stay undecoded: only the labels are decoded here, and
        # lazily, so that a few positions read a few chunks
        variable = self.stored.variable(self.dim).isel({self.dim: list(positions)})
        return variable.to_index_variable().to_index()

    def label_list(self, positions: Sequence[int]) -> list[Label]:
        return [_label(v) for v in self.values(positions)]

    def named(self, runs: Sequence[tuple[int, int]], known: Mapping[int, Label]) -> list[Gap]:
        """Gaps for position runs; labels already known are not read again."""
        wanted = sorted({p for a, b in runs for p in (a, b - 1)} - set(known))
        labels = {**known, **dict(zip(wanted, self.label_list(wanted), strict=True))}
        return [Gap(a, b, labels[a], labels[b - 1]) for a, b in runs]

    def gaps(self, start: int, stop: int) -> list[Gap]:
        present = self.present(start, stop)
        runs, begun = [], None
        for i, here in enumerate([*present.tolist(), True]):
            if not here and begun is None:
                begun = i
            elif here and begun is not None:
                runs.append((start + begun, start + i))
                begun = None
        return self.named(runs, {})

    def present(self, start: int, stop: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        stored = self.stored.undecoded
        bounds = {v.attrs.get("bounds") for v in stored.variables.values()}
        variables = [
            str(n) for n, v in stored.data_vars.items() if self.dim in v.dims and n not in bounds
        ]
        present = np.ones(stop - start, dtype=bool)
        for name in variables:
            present &= self._with_chunks(name, self.stored.arrays[name], start, stop)
        undecided, present = present, np.zeros(stop - start, dtype=bool)
        window = stored.isel({self.dim: slice(start, stop)})
        for name in variables:
            if not undecided.any():
                break
            found = _labels_with_values(window[name], self.dim, undecided)
            present |= found
            undecided &= ~found
        return present

    def _with_chunks(
        self, name: str, array: StoredArray, start: int, stop: int
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which positions in [start, stop) lie in a chunk row holding at least one chunk."""
        axis = array.dims.index(self.dim)
        size = array.chunks[axis]
        path = "/" + array_path(self.group, name)
        first, last = start // size, (stop - 1) // size
        rows_total = math.ceil(array.shape[axis] / size) if array.shape[axis] else 0
        others = [
            range(math.ceil(n / c))
            for i, (n, c) in enumerate(zip(array.shape, array.chunks, strict=True))
            if i != axis
        ]
        if 4 * (last - first + 1) < rows_total:
            # a few rows of a long array (an append, a window): ask for their chunks one by
            # one instead of listing every chunk of the array
            rows = {
                row for row in range(first, last + 1) if self._row_written(path, axis, row, others)
            }
        else:
            rows = _run(_chunk_rows(self.session, path, axis))
        return np.isin(np.arange(start, stop) // size, list(rows))

    def _row_written(self, path: str, axis: int, row: int, others: list[range]) -> bool:
        import icechunk

        for rest in itertools.product(*others):
            coords = [*rest[:axis], row, *rest[axis:]]
            if self.session.chunk_type(path, coords) != icechunk.ChunkType.uninitialized:
                return True
        return False


async def _chunk_rows(session: icechunk.Session, path: str, axis: int) -> set[int]:
    return {coords[axis] async for coords in session.chunk_coordinates(path)}


def _labels_with_values(
    variable: xr.DataArray, dim: str, candidates: np.ndarray[Any, np.dtype[np.bool_]]
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    result = np.zeros(len(candidates), dtype=bool)
    positions = np.flatnonzero(candidates)
    other = [d for d in variable.dims if d != dim]
    values = variable.isel({dim: positions})
    has_value = values.notnull().any(other) if other else values.notnull()
    result[positions] = np.asarray(has_value.values, dtype=bool)
    return result


def labels_at(
    session: icechunk.Session, group: str | None, append_dim: str, positions: Sequence[int]
) -> pd.Index:
    """The decoded labels at ``positions`` along ``append_dim``, reading only their chunks."""
    return _Judge(session, group, append_dim).values(positions)


def _label(value: Any) -> Label:
    if isinstance(value, np.datetime64 | pd.Timestamp):
        return str(pd.Timestamp(value))
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value)
    return str(value)  # cftime dates and anything else, as text


def _run(coroutine: Coroutine[Any, Any, set[int]]) -> set[int]:
    # Prefect may run a flow in a thread with an event loop: run ours on a fresh thread then
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


# -- the record every icefloe commit carries --------------------------------------------------------


@dataclass(frozen=True)
class CoverageChange:
    """What a write changes along its group's labels, for the record of its commit.

    ``spans`` are the positions [start, stop) the write touched, per dimension; None means
    the whole group (create, overwrite, modify). A dimension missing from the spans of a
    region write was written across all its labels.
    """

    group: str | None
    append_dim: str | None
    spans: Mapping[str, tuple[int, int]] | None
    replaces_group: bool = False
    # Every array along the dimensions the write touched was written across its span from
    # the source, and no label was left as fill values (no on_gap="fill" gap): those
    # positions hold data without reading them back. Reading a 2 GB create back at commit
    # took 3 s of its 16 (benchmarks, #14). A source label whose every value is missing
    # then counts as present; the validation's NaN fraction reports it.
    written_from_source: bool = False

    @classmethod
    def attributes_only(cls, group: str | None) -> CoverageChange:
        """A commit that changes attributes only (a spec): the record is carried as it is."""
        return cls(group, None, {})

    @classmethod
    def of(cls, plan: WritePlan) -> CoverageChange:
        whole = _written_from_source(plan)
        if plan.mode == "append" and plan.append_dim is not None:
            if plan.append_span is None:
                return cls.attributes_only(plan.group)
            return cls(
                plan.group,
                plan.append_dim,
                {plan.append_dim: plan.append_span},
                written_from_source=whole,
            )
        if plan.mode == "region" and plan.region is not None:
            # the dimension is the group's record's (a region may span several)
            return cls(plan.group, None, dict(plan.region), written_from_source=whole)
        return cls(
            plan.group,
            plan.append_dim,
            None,
            plan.mode == "overwrite",
            written_from_source=whole and plan.mode in ("create", "overwrite"),
        )


# what these actions write comes from the write's source, across the array's span
_FROM_SOURCE = frozenset({"create", "replace", "overwrite", "region", "resize"})


def _written_from_source(plan: WritePlan) -> bool:
    if plan.gaps:
        return False
    dims = {plan.append_dim} if plan.append_dim else set(plan.region or ())
    # dimension coordinates hold the labels, not data; a create or overwrite (no dims)
    # writes every other array
    rows = [a for a in plan.arrays if a.dims != (a.name,)]
    if dims:
        rows = [a for a in rows if dims & set(a.dims)]
    return bool(rows) and all(a.action in _FROM_SOURCE for a in rows)


def _group_key(group: str | None) -> str:
    return group or "/"


def _inside(key: str, group: str | None) -> bool:
    """Whether the group recorded under ``key`` lies in ``group`` (or is it)."""
    return group is None or key == group or key.startswith(group + "/")


def coverage_record(
    repo: icechunk.Repository, session: icechunk.Session, change: CoverageChange
) -> dict[str, Any]:
    """The ``coverage`` entry of the commit ``session`` is about to make.

    The record of the session's parent, carried over, with the written group's entry
    brought up to date: only the positions the write touched are judged when the parent
    has an entry for the group along the same dimension; otherwise the group is judged
    whole (once: the next commits carry it on). Called at commit time, after any rebase,
    so that the parent is the commit's real parent.
    """
    parent = repo.lookup_snapshot(session.snapshot_id).metadata or {}
    block = parent.get("icefloe")
    carried: dict[str, Any] = dict(block.get(RECORD_KEY) or {}) if isinstance(block, dict) else {}
    key = _group_key(change.group)
    if change.spans == {} and not change.replaces_group:
        return carried  # no label changed
    previous = Coverage.from_record(change.group, carried[key]) if key in carried else None
    if change.replaces_group:  # an overwrite may delete subgroups as well
        carried = {k: v for k, v in carried.items() if not _inside(k, change.group)}
    dim = change.append_dim or (previous.append_dim if previous else None)
    dim = dim or _default_dimension(session, change.group)
    carried.pop(key, None)
    if dim is None:
        return carried
    try:
        spans = change.spans or {}
        written = change.written_from_source
        if previous is not None and previous.append_dim == dim and dim in spans:
            found = _updated(previous, session, *spans[dim], written=written)
        elif written and change.spans is None:
            judge = _Judge(session, change.group, dim)  # the whole group, from the source
            found = judge.coverage(())
        else:
            found = full_coverage(session, change.group, dim)
    except ValueError:  # the group has no such dimension coordinate: nothing to record
        return carried
    carried[key] = found.to_record()
    return carried


def _default_dimension(session: icechunk.Session, group: str | None) -> str | None:
    """For a write that names no dimension (create, modify): ``time`` when the group has it."""
    axis = StoredGroup(session.store, group).arrays.get("time")
    return "time" if axis is not None and axis.dims == ("time",) else None


def recorded_coverage(
    metadata: Mapping[str, Any] | None, group: str | None, append_dim: str
) -> Coverage | None:
    """The coverage a commit recorded for ``group`` along ``append_dim``, if any."""
    block = (metadata or {}).get("icefloe")
    record = (block.get(RECORD_KEY) or {}) if isinstance(block, dict) else {}
    entry = record.get(_group_key(group))
    if not entry or entry.get("append_dim") != append_dim:
        return None
    return Coverage.from_record(group, entry)


def coverage(
    repo: icechunk.Repository,
    group: str | None = None,
    append_dim: str = "time",
    *,
    branch: str = "main",
    snapshot_id: str | None = None,
) -> Coverage:
    """The coverage of ``group`` at the tip of ``branch`` (or at ``snapshot_id``).

    Read from the commit's record in O(gaps) when it has one that matches the stored
    labels; judged in full otherwise (a commit made outside icefloe).
    """
    snapshot = snapshot_id or repo.lookup_branch(branch)
    session = repo.readonly_session(snapshot_id=snapshot)
    recorded = recorded_coverage(repo.lookup_snapshot(snapshot).metadata, group, append_dim)
    if recorded is not None:
        axis = StoredGroup(session.store, group).arrays.get(append_dim)
        if axis is not None and axis.dims == (append_dim,) and axis.shape[0] == recorded.n_labels:
            return recorded
    return full_coverage(session, group, append_dim)
