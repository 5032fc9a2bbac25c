"""The sections of ``python -m benchmarks.scale``; each returns a JSON-ready dict."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pandas as pd
import xarray as xr

from benchmarks.scale import Bench, fresh
from benchmarks.scale_data import START, TileShape, tiles, tiles_source


def _open(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _same_as_source(repo: icechunk.Repository, shape: TileShape, first: int, periods: int) -> bool:
    stored = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    expected = tiles(first, periods, **shape.kwargs()).compute()
    return bool(
        stored.sizes["time"] == periods
        and np.array_equal(stored["time"].values, expected["time"].values)
        and all(np.array_equal(stored[v].values, expected[v].values) for v in expected.data_vars)
    )


# -- planning and orchestration of backfills ---------------------------------------------------


def _warm(client: Any) -> None:
    """Import what a unit needs on every worker once, as any long-lived cluster has."""

    def imports() -> None:
        import flows.backfill  # noqa: F401
        import tasks.windows  # noqa: F401

    client.run(imports)


def _busy_by_worker(stream: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds each worker computed, and how many tasks, from a dask task stream."""
    out: dict[str, dict[str, float]] = {}
    for record in stream:
        worker = str(record.get("worker"))
        spent = sum(
            s["stop"] - s["start"] for s in record.get("startstops", ()) if s["action"] == "compute"
        )
        entry = out.setdefault(worker, {"tasks": 0, "seconds": 0.0})
        entry["tasks"] += 1
        entry["seconds"] += spent
    return out


def _direct_units(bench: Bench, path: Path, shape: TileShape, windows: int, batch: int) -> float:
    """The same windows written by a bare script: the units of the flow, each one dask task
    into a copy of one fork, merged and committed every 5 s; no Prefect, no flow."""
    import functools

    from distributed import Client, as_completed

    from flows.backfill import _open_window
    from flows.sources import PythonSource
    from tasks.publish import WindowPublisher
    from tasks.request import WriteRequest
    from tasks.stored import StoredGroup
    from tasks.windows import positions_of, units_of, write_windows

    repo = _open(path)
    labels = StoredGroup(repo.readonly_session("main").store, None).indexes["time"]
    edges = [START + pd.Timedelta(hours=k) for k in range(windows + 1)]
    spans = positions_of(labels, list(itertools.pairwise(edges)))
    source = PythonSource.model_validate(tiles_source(shape))
    with Client(bench.address, set_as_default=False) as client:
        threads = sum(client.nthreads().values())
        units = units_of(spans, [1], max(1, batch // threads))
        begun = time.perf_counter()
        publisher = WindowPublisher(repo, "main")
        base, fork = publisher.fork()
        shared = client.scatter(fork, broadcast=True, hash=False)
        write = functools.partial(
            write_windows,
            open_window=functools.partial(_open_window, source, "time"),
            request=WriteRequest(mode="region", region={"time": "auto"}),
            dim="time",
        )
        futures = [client.submit(write, shared, unit=u, pure=False) for u in units]
        waiting: list[Any] = []
        last = time.monotonic()
        with client.as_current():
            for future in as_completed(futures):
                waiting.append(future.result().fork)
                if time.monotonic() - last >= 5.0:
                    publisher.publish(base, waiting, "direct units")
                    waiting, last = [], time.monotonic()
        if waiting:
            publisher.publish(base, waiting, "direct units")
        return time.perf_counter() - begun


def _backfill_run(
    bench: Bench, path: Path, shape: TileShape, windows: int, batch: int
) -> dict[str, Any]:
    from distributed import Client, get_task_stream

    from flows import Target, backfill_flow

    end = START + pd.Timedelta(hours=windows)
    with (
        Client(bench.address, set_as_default=False) as client,
        get_task_stream(client=client) as stream,
    ):
        begun = time.perf_counter()
        result = backfill_flow(
            Target(repo=str(path)),
            tiles_source(shape),
            start=START.to_pydatetime(),
            end=end.to_pydatetime(),
            freq="1h",
            batch=batch,
            scheduler_address=bench.address,
        )
        wall = time.perf_counter() - begun
    workers = _busy_by_worker(stream.data)
    return {"wall": wall, "result": result.model_dump(), "workers": workers}


def planning(bench: Bench) -> dict[str, Any]:
    """backfill_flow of many hourly windows of one tiny chunk each: orchestration dominates."""
    from distributed import Client

    shape = TileShape(ny=16, nx=16, tile=16)
    cases = [(100, 2), (100, 64), (1000, 64)] if bench.sizes == "small" else [
        (100, 2), (1000, 2), (1000, 64), (10_000, 64), (10_000, 256)
    ]  # fmt: skip
    with Client(bench.address, set_as_default=False) as client:
        _warm(client)
        threads = sum(client.nthreads().values())
    rows = []
    for windows, batch in cases:
        bench.log(
            f"planning: backfill of {windows} hourly windows, batch {batch} ({shape.describe()})"
        )
        path = fresh(bench, f"backfill-{windows}-{batch}")
        run = _backfill_run(bench, path, shape, windows, batch)
        result = run["result"]
        same = _same_as_source(_open(path), shape, 0, windows)
        # the same windows again, written without Prefect and without the flow: the
        # repository is reset to the extended, still empty arrays first
        repo = _open(path)
        extended = [s.id for s in repo.ancestry(branch="main")][-3]  # create, extend
        repo.reset_branch("main", extended)
        direct = _direct_units(bench, path, shape, windows, batch)
        same_direct = _same_as_source(_open(path), shape, 0, windows)
        written = result["windows_written"] - 1  # the first window created the group
        seconds = result["seconds"]
        busy = sum(w["seconds"] for w in run["workers"].values())
        row = {
            "windows": windows,
            "batch": batch,
            "wall": run["wall"],
            "seconds": seconds,
            "commits": result["commits"],
            "direct_write": direct,
            "orchestration_ms_per_window": (seconds["write"] - direct) / max(written, 1) * 1000,
            "flow_ms_per_window": (run["wall"] - seconds["extend"]) / max(written, 1) * 1000,
            "worker_busy_seconds": busy,
            "ideal_seconds": busy / threads,
            "workers": run["workers"],
            "identical": same and same_direct,
        }
        bench.log(
            f"   plan {seconds['plan']:.2f} s, write {seconds['write']:.1f} s vs direct {direct:.1f} s "
            f"→ orchestration {row['orchestration_ms_per_window']:.1f} ms/window; "
            f"{result['commits']} commits; workers {[(w['tasks'], round(w['seconds'], 1)) for w in run['workers'].values()]}; "
            f"identical {row['identical']}"
        )
        rows.append(row)
    return {"shape": shape.describe(), "threads": threads, "rows": rows}


def growth(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def bigrun(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def contention(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def gc(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


_ = (dt, time)
