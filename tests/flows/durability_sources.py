"""Python sources for the durability flow tests (importable by name, as deployments do)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from flows.targets import Target
from tests.flows.python_sources import scaled, synthetic
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

DATA_VARS = ("air_temperature", "eastward_wind", "northward_wind", "precipitation_flux")


def revised(start: str, periods: int, factor: float = 3.0) -> xr.Dataset:
    """A window of the synthetic data with revised (multiplied) values, crs kept: an append
    with on_overlap="overwrite" takes it as a correction of labels already stored."""
    ds = synthetic(start, periods)
    for name in DATA_VARS:
        ds[name] = (ds[name] * np.float32(factor)).assign_attrs(ds[name].attrs)
    return ds


def with_nans(start: str, periods: int) -> xr.Dataset:
    """A region window in which a quarter of air_temperature is missing."""
    ds = scaled(start, periods).load()
    values = ds["air_temperature"].values.copy()
    values[:, : values.shape[1] // 4 or 1, :] = np.nan
    ds["air_temperature"] = ds["air_temperature"].copy(data=values)
    return ds.chunk({"time": 12})


# -- gates: lazy blocks that wait on other runs, to interleave concurrent runs exactly -----
#
# They run on the dask workers. A waiting block secedes from the worker's thread pool, so
# other runs' blocks keep running on the 2-thread test cluster.

GATE_TIMEOUT = 60.0


def _labels_stored(target: dict[str, Any], group: str) -> int:
    """How many labels ``group`` holds at the tip; a worker has no Prefect API, so a target
    with a Secret block is read with the test S3 server's credentials."""
    model = Target.model_validate(target)
    credentials = (
        {"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}
        if model.credentials_secret_block
        else None
    )
    session = model.open_repository(credentials=credentials).readonly_session(branch=model.branch)
    return zarr.open_array(session.store, path=f"{group}/time", mode="r").shape[0]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    from distributed import rejoin, secede

    secede()
    try:
        deadline = time.monotonic() + GATE_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                # not a TimeoutError: the write phase would retry it as transient
                raise RuntimeError(f"gave up waiting until {what}")
            time.sleep(0.25)
    finally:
        rejoin()


def _region_gate(
    block: np.ndarray, sync_dir: str, run: str, target: dict[str, Any], group: str, labels: int
) -> np.ndarray:
    Path(sync_dir, f"started-{run}").touch()
    _wait_until(lambda: _labels_stored(target, group) >= labels, f"{group} holds {labels} labels")
    return block


def gated_scaled(
    start: str,
    periods: int,
    factor: float,
    sync_dir: str,
    run: str,
    target: dict[str, Any],
    group: str,
    labels: int,
) -> xr.Dataset:
    """``scaled``, whose write says it started (a file in ``sync_dir``) and then cannot
    finish before ``group`` holds ``labels`` labels: its first attempt is sure to be based
    on the tip before an append and to commit after it."""
    ds = scaled(start, periods, factor)
    data = ds["air_temperature"].data
    gated = da.map_blocks(
        _region_gate,
        data,
        sync_dir=sync_dir,
        run=run,
        target=target,
        group=group,
        labels=labels,
        dtype=data.dtype,
    )
    ds["air_temperature"] = ds["air_temperature"].copy(data=gated)
    return ds


# -- slow blocks: a lazy write that lasts long enough to kill a worker in the middle -------


def _slow(block: np.ndarray, delay: float) -> np.ndarray:
    time.sleep(delay)
    return block


def slow_synthetic(delay: float = 0.3, **window: Any) -> xr.Dataset:
    """The synthetic source's window (same values), each dask block taking ``delay`` s."""
    from flows.sources import SyntheticSource

    ds = SyntheticSource(kind="synthetic", **window).open()
    for name in DATA_VARS:
        data = ds[name].data
        ds[name] = ds[name].copy(data=da.map_blocks(_slow, data, delay=delay, dtype=data.dtype))
    return ds
