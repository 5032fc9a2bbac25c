"""Which labels along the append dimension hold data, and where the gaps are.

A label counts as present when every data variable along the dimension (bounds
variables aside: they are written with the labels) has the chunk that holds it, and
one of them has a value there that is not its fill value. The chunk manifest answers
most of it without reading data (a backfill extends arrays first, leaving their new
chunks absent); values are read only inside existing chunks, one variable after the
other and only for labels still undecided, so a chunk that a window filled partly is
judged label by label.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from tasks.stored import StoredGroup, array_path

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

    import icechunk


@dataclass(frozen=True)
class Gap:
    first: Any
    last: Any
    count: int


@dataclass(frozen=True)
class Coverage:
    """Presence of data per label along ``append_dim``."""

    group: str | None
    append_dim: str
    labels: pd.Index
    present: np.ndarray[Any, np.dtype[np.bool_]]

    @property
    def n_present(self) -> int:
        return int(self.present.sum())

    def gaps(self) -> list[Gap]:
        runs: list[Gap] = []
        start = None
        for i, here in enumerate([*self.present.tolist(), True]):
            if not here and start is None:
                start = i
            elif here and start is not None:
                runs.append(Gap(self.labels[start], self.labels[i - 1], i - start))
                start = None
        return runs

    def missing_between(self, start: Any, end: Any) -> bool:
        """Whether any stored label in [start, end) lacks data, or none is stored there."""
        inside = (self.labels >= start) & (self.labels < end)
        return not inside.any() or not self.present[inside].all()

    def missing_in(self, windows: Sequence[tuple[Any, Any]]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """``missing_between`` of many [start, end) windows at once: two binary searches
        and a cumulative count instead of a pass over every label per window."""
        if not len(windows):
            return np.zeros(0, dtype=bool)
        lo = np.asarray(self.labels.searchsorted([w[0] for w in windows], side="left"))
        hi = np.asarray(self.labels.searchsorted([w[1] for w in windows], side="left"))
        absent = np.concatenate([[0], np.cumsum(~self.present)])
        return np.asarray((hi <= lo) | (absent[hi] > absent[lo]), dtype=bool)

    def markdown(self) -> str:
        where = f"group {self.group!r}" if self.group else "the root group"
        lines = [
            f"# Coverage of {where} along {self.append_dim!r}",
            "",
            f"{self.n_present} of {len(self.labels)} labels hold data"
            + (f", from {self.labels[0]} to {self.labels[-1]}" if len(self.labels) else ""),
            "",
            "| gap | first label | last label | labels |",
            "|---|---|---|---|",
        ]
        gaps = self.gaps()
        lines += [f"| {i + 1} | {g.first} | {g.last} | {g.count} |" for i, g in enumerate(gaps)]
        if not gaps:
            lines.append("| - | no gaps | | 0 |")
        return "\n".join(lines)

    def __str__(self) -> str:
        gaps = self.gaps()
        head = f"{self.n_present}/{len(self.labels)} labels along {self.append_dim!r} hold data"
        if not len(self.labels):
            return head
        bar = _bar(self.present, width=60)
        body = [head, f"{self.labels[0]}  {bar}  {self.labels[-1]}"]
        body += [f"  gap: {g.first} … {g.last} ({g.count} labels)" for g in gaps] or ["  no gaps"]
        return "\n".join(body)

    def plot(self, path: str) -> None:
        """A PNG strip: data in blue, gaps in red."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 1.6), dpi=100)
        n = len(self.labels)
        # one image column per pixel, not one bar patch per label: a bar per label took
        # minutes for 10^5 labels. A column is red when any label in it lacks data.
        columns = np.array_split(self.present, min(max(n, 1), 1000)) if n else []
        strip = np.array([[c.all() for c in columns]], dtype=float) if n else np.ones((1, 1))
        colours = matplotlib.colors.ListedColormap(["#d62728", "#1f77b4"])
        ax.imshow(strip, aspect="auto", cmap=colours, vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([])
        if n:
            ticks = np.unique(
                np.linspace(0, strip.shape[1] - 1, min(6, strip.shape[1])).astype(int)
            )
            labels = [str(self.labels[min(n - 1, t * n // strip.shape[1])])[:16] for t in ticks]
            ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_title(
            f"{self.append_dim}: {self.n_present}/{len(self.labels)} labels hold data (gaps red)"
        )
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _bar(present: np.ndarray[Any, Any], width: int) -> str:
    if not len(present):
        return ""
    cells = np.array_split(present, min(width, len(present)))
    return "".join("█" if c.all() else ("▒" if c.any() else "·") for c in cells)


def coverage(
    session: icechunk.Session, group: str | None = None, append_dim: str = "time"
) -> Coverage:
    """The coverage of ``group`` along ``append_dim`` in ``session`` (read-only is fine)."""
    # Times other than the labels stay undecoded: fill values are masked all the same, and
    # an extended float time variable (bounds) in a non-standard calendar holding only fill
    # values in its new part cannot be decoded at all
    group_view = StoredGroup(session.store, group)
    if append_dim not in group_view.indexes:
        raise ValueError(
            f"the group has no {append_dim!r} coordinate (it has {sorted(group_view.indexes)}); "
            "pass the append dimension as append_dim"
        )
    labels = group_view.indexes[append_dim]
    stored = group_view.undecoded
    bounds = {v.attrs.get("bounds") for v in stored.variables.values()}
    variables = [
        str(n) for n, v in stored.data_vars.items() if append_dim in v.dims and n not in bounds
    ]
    present = np.ones(len(labels), dtype=bool)
    for name in variables:
        present &= _labels_with_chunks(session, group, name, stored[name], append_dim)
    undecided, present = present, np.zeros(len(labels), dtype=bool)
    for name in variables:
        if not undecided.any():
            break
        found = _labels_with_values(stored[name], append_dim, undecided)
        present |= found
        undecided &= ~found
    return Coverage(group, append_dim, labels, present)


def _labels_with_chunks(
    session: icechunk.Session, group: str | None, name: str, variable: xr.DataArray, dim: str
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    axis = variable.dims.index(dim)
    size = variable.encoding.get("chunks", variable.shape)[axis]
    path = "/" + array_path(group, name)

    async def chunk_rows() -> set[int]:
        return {coords[axis] async for coords in session.chunk_coordinates(path)}

    rows = _run(chunk_rows())
    return np.isin(np.arange(variable.sizes[dim]) // size, list(rows))


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


def _run(coroutine: Coroutine[Any, Any, set[int]]) -> set[int]:
    # Prefect may run a flow in a thread with an event loop: run ours on a fresh thread then
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
