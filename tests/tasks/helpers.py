"""Run the writer's phases the way every caller does: plan, metadata, eager, verify, lazy."""

from __future__ import annotations

from collections.abc import Callable

import icechunk
import xarray as xr

from tasks.plan import WritePlan
from tasks.writer import XarrayDatasetWriter


def write(
    repo: icechunk.Repository,
    ds: xr.Dataset,
    choose: Callable[[XarrayDatasetWriter], XarrayDatasetWriter],
    message: str = "write",
) -> WritePlan:
    """All phases in order and one commit; a writer that raises leaves nothing committed."""
    session = repo.writable_session("main")
    plan = choose(XarrayDatasetWriter(ds, store=session.store)).write()
    if session.has_uncommitted_changes:
        session.commit(message)
    return plan


def chunked_group(repo: icechunk.Repository) -> xr.Dataset:
    """Group 'g' holding 12 days whose 'tas' is chunked 4 days at a time; returns the data."""
    from tests.cf_datasets import cf_dataset

    ds = cf_dataset(12)
    write(
        repo,
        ds,
        lambda w: w.for_create_or_overwrite(group="g", encoding={"tas": {"chunks": (4, 3, 4)}}),
    )
    return ds


def constant_patch(ds: xr.Dataset, start: int, stop: int, value: float) -> xr.Dataset:
    """'tas' over days [start, stop) set to ``value``, dask-backed: a region write's input."""
    import numpy as np

    from tests.cf_datasets import lazy

    patch = ds[["tas"]].isel(time=slice(start, stop)).drop_vars("height")
    return lazy(patch.copy(data={"tas": np.full(patch.tas.shape, value, dtype="float32")}), 4)
