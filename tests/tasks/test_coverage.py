"""Coverage: labels with data, gaps after an extension that wrote no values, per label; the
record each commit carries equals judging every label again, through appends, gaps,
backfilled windows, a commit made outside icefloe and two commits racing."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tasks.commit import commit_session
from tasks.coverage import (
    RECORD_KEY,
    Coverage,
    CoverageChange,
    Gap,
    coverage,
    coverage_record,
    full_coverage,
    recorded_coverage,
)
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset
from tests.tasks.helpers import write

DATA = ("tas", "pr", "tas_packed")
ENCODING = {n: {"chunks": (4, 3, 4)} for n in DATA}

Choose = Callable[[XarrayDatasetWriter], XarrayDatasetWriter]


def test_an_extended_axis_shows_its_unwritten_labels_as_a_gap(repo, tmp_path):
    ds = cf_dataset(12)
    write(
        repo,
        ds.isel(time=slice(0, 4)),
        lambda w: w.for_create_or_overwrite(group="g", encoding=ENCODING),
    )
    # labels only: the arrays grow, their new chunks stay absent
    labels_only = ds.isel(time=slice(4, 12))[["time_bnds"]]
    write(repo, labels_only, lambda w: w.for_append(group="g", fill_missing=True))
    # a region fills two labels in the middle, half of one chunk
    patch = ds.isel(time=slice(7, 9))[list(DATA)].drop_vars("height")
    write(repo, patch, lambda w: w.for_region(group="g"))

    found = full_coverage(repo.readonly_session("main"), "g")

    assert found.present().tolist() == [True] * 4 + [False] * 3 + [True] * 2 + [False] * 3
    assert [(g.count, str(g.first)[:10]) for g in found.gaps] == [
        (3, "2000-01-05"),
        (3, "2000-01-10"),
    ]
    assert found.missing_between(np.datetime64("2000-01-05"), np.datetime64("2000-01-07"))
    assert not found.missing_between(np.datetime64("2000-01-01"), np.datetime64("2000-01-05"))
    assert found.missing_between(pd.Timestamp("2000-02-01"), pd.Timestamp("2000-02-02"))
    assert "6 labels" not in str(found)
    assert "| 1 | 2000-01-05" in found.markdown()
    found.plot(str(tmp_path / "coverage.png"))
    assert (tmp_path / "coverage.png").stat().st_size > 1000


def test_missing_in_answers_missing_between_for_every_window_at_once() -> None:
    labels = pd.date_range("2000-01-01", periods=30, freq="D")

    def gap(a: int, b: int) -> Gap:
        return Gap(a, b, str(labels[a]), str(labels[b - 1]))

    found = Coverage(
        None, "time", 30, str(labels[0]), str(labels[-1]), (gap(3, 5), gap(17, 18), gap(29, 30))
    )
    edges = pd.date_range("1999-12-29", periods=14, freq="3D")  # some before and after
    windows = [(a, b) for a, b in itertools.pairwise(edges)]
    windows.append((pd.Timestamp("2000-01-10"), pd.Timestamp("2000-01-10")))  # empty

    expected = [found.missing_between(a, b) for a, b in windows]
    assert found.missing_in(windows).tolist() == expected
    assert any(expected)
    assert not all(expected)


def _recorded(
    repo: icechunk.Repository,
    ds: xr.Dataset,
    choose: Choose,
    session: icechunk.Session | None = None,
) -> str:
    """A write committed as the flows commit: with the coverage record of its commit."""
    session = session or repo.writable_session("main")
    change = CoverageChange.of(choose(XarrayDatasetWriter(ds, store=session.store)).write())
    return commit_session(
        session,
        "write",
        lambda s: {"icefloe": {RECORD_KEY: coverage_record(repo, s, change)}},
    )


def _record_is_exact(repo: icechunk.Repository, group: str = "g") -> Coverage:
    """The tip's record equals every label judged again, and is what coverage() reads."""
    recorded = recorded_coverage(
        repo.lookup_snapshot(repo.lookup_branch("main")).metadata, group, "time"
    )
    assert recorded is not None
    assert recorded == full_coverage(repo.readonly_session("main"), group)
    assert coverage(repo, group) == recorded
    return recorded


def _gaps(found: Coverage) -> list[tuple[int, int]]:
    return [(g.start, g.stop) for g in found.gaps]


def _region(ds: xr.Dataset, start: int, stop: int) -> xr.Dataset:
    return ds.isel(time=slice(start, stop))[list(DATA)].drop_vars("height")


def test_the_record_equals_a_full_judgement_through_gaps_backfills_and_a_foreign_commit(repo):
    ds = cf_dataset(40)
    _recorded(
        repo, ds.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite("g", encoding=ENCODING)
    )
    assert _gaps(_record_is_exact(repo)) == []
    # an append that fills a chunk left partly written, then one that only extends the labels
    _recorded(repo, ds.isel(time=slice(6, 10)), lambda w: w.for_append("g"))
    _recorded(
        repo,
        ds.isel(time=slice(10, 20))[["time_bnds"]],
        lambda w: w.for_append("g", fill_missing=True),
    )
    assert _gaps(_record_is_exact(repo)) == [(10, 20)]
    # a backfilled window in the middle of the gap splits it; appends go on after it
    _recorded(repo, _region(ds, 13, 15), lambda w: w.for_region("g"))
    assert _gaps(_record_is_exact(repo)) == [(10, 13), (15, 20)]
    _recorded(repo, ds.isel(time=slice(20, 24)), lambda w: w.for_append("g"))
    found = _record_is_exact(repo)
    assert _gaps(found) == [(10, 13), (15, 20)]
    assert [(g.first, g.last) for g in found.gaps] == [
        ("2000-01-11 00:00:00", "2000-01-13 00:00:00"),
        ("2000-01-16 00:00:00", "2000-01-20 00:00:00"),
    ]

    # a commit made outside icefloe (no record) blanks two labels: judged in full
    blank = _region(ds, 21, 23)
    blank = blank.copy(data={n: np.full_like(blank[n].values, np.nan) for n in DATA})
    write(repo, blank, lambda w: w.for_region("g"))
    assert (
        recorded_coverage(repo.lookup_snapshot(repo.lookup_branch("main")).metadata, "g", "time")
        is None
    )
    assert _gaps(coverage(repo, "g")) == [(10, 13), (15, 20), (21, 23)]
    # the next icefloe commit records it again, judged whole once
    _recorded(repo, ds.isel(time=slice(24, 26)), lambda w: w.for_append("g"))
    assert _gaps(_record_is_exact(repo)) == [(10, 13), (15, 20), (21, 23)]

    # a backfill: the windows of the first gaps, and the foreign gap, filled
    for start, stop in ((10, 13), (15, 20), (21, 23)):
        _recorded(repo, _region(ds, start, stop), lambda w: w.for_region("g"))
    found = _record_is_exact(repo)
    assert found.gaps == ()
    assert found.n_present == found.n_labels == 26


def test_labels_a_write_took_from_its_source_are_recorded_without_reading_them_back(repo):
    """A create and an append of every variable record their positions as holding data
    from the plan alone: a label the source left all missing counts as present (the
    validation's NaN fraction reports it), where reading the values back calls it a gap.
    Labels a write leaves as fill values are still judged (the test above)."""
    ds = cf_dataset(12)
    blank = ds.copy(deep=True)
    for name in DATA:
        blank[name][[2, 10]] = np.nan
    _recorded(repo, blank.isel(time=slice(0, 8)), lambda w: w.for_create_or_overwrite("g"))
    _recorded(repo, blank.isel(time=slice(8, 12)), lambda w: w.for_append("g"))

    record = recorded_coverage(
        repo.lookup_snapshot(repo.lookup_branch("main")).metadata, "g", "time"
    )
    assert record is not None
    assert (record.n_labels, record.gaps) == (12, ())
    assert _gaps(full_coverage(repo.readonly_session("main"), "g")) == [(2, 3), (10, 11)]


def test_two_windows_committed_at_once_record_both(repo):
    """The second commit is rebased onto the first: its record is computed again on top."""
    ds = cf_dataset(36)
    _recorded(
        repo,
        ds.isel(time=slice(0, 28)),
        lambda w: w.for_create_or_overwrite("g", encoding=ENCODING),
    )
    _recorded(
        repo,
        ds.isel(time=slice(28, 36))[["time_bnds"]],
        lambda w: w.for_append("g", fill_missing=True),
    )
    assert _gaps(_record_is_exact(repo)) == [(28, 36)]
    first, second = repo.writable_session("main"), repo.writable_session("main")

    _recorded(repo, _region(ds, 28, 32), lambda w: w.for_region("g"), session=first)
    _recorded(repo, _region(ds, 32, 36), lambda w: w.for_region("g"), session=second)

    assert _record_is_exact(repo).gaps == ()


def test_a_record_that_does_not_match_the_stored_labels_is_judged_again(repo):
    ds = cf_dataset(8)
    _recorded(
        repo, ds.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite("g", encoding=ENCODING)
    )
    session = repo.writable_session("main")
    XarrayDatasetWriter(ds.isel(time=slice(4, 8))[["time_bnds"]], store=session.store).for_append(
        "g", fill_missing=True
    ).write()
    # another tool's commit that copied a stale record along
    stale = repo.lookup_snapshot(repo.lookup_branch("main")).metadata
    session.commit("copied metadata", metadata=stale)

    assert coverage(repo, "g") == full_coverage(repo.readonly_session("main"), "g")
    assert _gaps(coverage(repo, "g")) == [(4, 8)]


@pytest.mark.parametrize(
    "gaps",
    [[], [(0, 1)], [(3, 7), (20, 21)], [(0, 50), (99, 100)], [(10, 11), (12, 13), (70, 99)]],
)
def test_what_is_drawn_follows_the_gaps(gaps: list[tuple[int, int]]) -> None:
    found = Coverage(None, "time", 100, 0, 99, tuple(Gap(a, b, a, b - 1) for a, b in gaps))
    mask = found.present()
    cells = np.array_split(mask, 60)
    bar = "".join("█" if c.all() else ("▒" if c.any() else "·") for c in cells)

    assert mask.sum() == found.n_present
    assert bar in str(found)
    assert found.missing_between(0, 100) == bool(gaps)
