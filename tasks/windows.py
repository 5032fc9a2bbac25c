"""Many region writes as few units of work: what makes a backfill of thousands of windows cheap.

A backfill writes windows of one group that the arrays already span (they were extended
first), so every window is a region write of different labels of the same arrays, made
against the same snapshot. Rather than run each as a flow write of its own (a plan, five
phases, a commit and a rebase per window), windows are grouped into *units*:

- a unit is a run of consecutive windows; two units never touch the same zarr chunk
  (a window boundary inside a chunk keeps both windows in one unit), so units written
  side by side into copies of one fork merge without one overwriting the other;
- a unit is written on a dask worker, window after window, into its own copy of a fork
  of the base snapshot (``write_windows``), each window planned, written and verified by
  the same writer as any region run; only the fork (a few KB) comes back;
- the flow merges the forks of finished units and publishes them in groups, one commit
  per group (``tasks.publish.WindowPublisher``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from tasks.request import WriteRequest
from tasks.writer import XarrayDatasetWriter

if TYPE_CHECKING:
    from icechunk.session import ForkSession

__all__ = ["UnitWritten", "WindowSpan", "positions_of", "units_of", "write_windows"]


@dataclass(frozen=True)
class WindowSpan:
    """A window: its labels [start, end) and their positions [lo, hi) along the dimension."""

    start: pd.Timestamp
    end: pd.Timestamp
    lo: int
    hi: int


def positions_of(labels: pd.Index, windows: Sequence[tuple[Any, Any]]) -> list[WindowSpan]:
    """Each window with the positions of its stored labels (a window may hold none)."""
    starts = labels.searchsorted([pd.Timestamp(w[0]) for w in windows], side="left")
    ends = labels.searchsorted([pd.Timestamp(w[1]) for w in windows], side="left")
    return [
        WindowSpan(pd.Timestamp(w[0]), pd.Timestamp(w[1]), int(lo), int(hi))
        for w, lo, hi in zip(windows, np.asarray(starts), np.asarray(ends), strict=True)
    ]


def units_of(
    windows: Sequence[WindowSpan], chunk_sizes: Sequence[int], per_unit: int
) -> list[list[WindowSpan]]:
    """``windows`` (sorted, disjoint) cut into units of at least ``per_unit`` windows
    where possible, cutting only where no chunk of any size in ``chunk_sizes`` (the
    arrays' chunk lengths along the dimension) would be shared by two units."""
    units: list[list[WindowSpan]] = []
    current: list[WindowSpan] = []
    for window in windows:
        if current and len(current) >= per_unit:
            last = current[-1]
            if all((last.hi - 1) // size < window.lo // size for size in chunk_sizes):
                units.append(current)
                current = []
        current.append(window)
    if current:
        units.append(current)
    return units


@dataclass(frozen=True)
class UnitWritten:
    """What a worker sends back for one unit: its fork and what the windows wrote."""

    fork: ForkSession
    windows: tuple[tuple[int, int], ...]  # positions written, per window
    variables: tuple[str, ...]
    chunks_written: int
    bytes_written: int
    # windows whose source has no labels yet (a file that has not arrived): not written,
    # so the next validation finds them missing and asks again
    without_source: tuple[tuple[int, int], ...] = ()


OpenWindow = Callable[[pd.Timestamp, pd.Timestamp], xr.Dataset]


def write_windows(
    fork: ForkSession,
    open_window: OpenWindow,
    request: WriteRequest,
    dim: str,
    unit: Sequence[WindowSpan],
) -> UnitWritten:
    """Write the unit's windows into a copy of ``fork``.

    Runs where it is called (a dask worker), computing the values right there on the
    synchronous scheduler: the unit is the cluster's unit of work. Windows that follow
    each other without a gap are opened one by one and written as one region write (one
    plan, one verification, one lazy write for the run of windows: the same values in
    the same chunks as writing them one after the other). A window whose source has no
    labels yet is left out. A window that fails raises, and nothing of the unit is
    published.
    """
    copy: ForkSession = pickle.loads(pickle.dumps(fork))
    variables: set[str] = set()
    chunks = nbytes = 0
    with dask.config.set(scheduler="synchronous"):
        opened = [(w, open_window(w.start, w.end)) for w in unit]
        present = [(w, ds) for w, ds in opened if ds.sizes.get(dim, 0)]
        for run in _contiguous(present):
            datasets = [ds for _, ds in run]
            dataset = datasets[0] if len(datasets) == 1 else _concat(datasets, dim)
            plan = XarrayDatasetWriter(dataset, store=copy.store).for_request(request).write()
            variables.update(plan.variables)
            chunks += plan.chunks_written
            nbytes += plan.bytes_written
    return UnitWritten(
        copy,
        tuple((w.lo, w.hi) for w, _ in present),
        tuple(sorted(variables)),
        chunks,
        nbytes,
        without_source=tuple((w.lo, w.hi) for w, ds in opened if not ds.sizes.get(dim, 0)),
    )


def _contiguous(
    windows: Sequence[tuple[WindowSpan, xr.Dataset]],
) -> list[list[tuple[WindowSpan, xr.Dataset]]]:
    runs: list[list[tuple[WindowSpan, xr.Dataset]]] = []
    for window in windows:
        if runs and runs[-1][-1][0].hi == window[0].lo:
            runs[-1].append(window)
        else:
            runs.append([window])
    return runs


def _concat(datasets: list[xr.Dataset], dim: str) -> xr.Dataset:
    # coordinates of other dimensions must agree window to window, as each window's own
    # plan would require of them; the planner then checks the run against the store
    return xr.concat(
        datasets,
        dim=dim,
        data_vars="minimal",
        coords="minimal",
        compat="equals",
        join="exact",
        combine_attrs="override",
    )
