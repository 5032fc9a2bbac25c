"""The sections of ``python -m benchmarks.scale``; each returns a JSON-ready dict."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

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
        units = units_of(spans, [1], max(1, batch // (2 * threads)))
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
    cases = [(100, 16), (1000, 16), (1000, 256)] if bench.sizes == "small" else [
        (100, 16), (1000, 16), (10_000, 16), (10_000, 256)
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


# -- contention: many windows and many runs at once --------------------------------------------


class _Retries(logging.Handler):
    """Counts the log lines that say a commit was tried again or a run started over."""

    PATTERNS: ClassVar[dict[str, str]] = {
        "commit retried (branch moved, rebased again)": "rebasing again",
        "publish retried (branch moved during compare-and-swap)": "moved during publish",
        "run started over (arrays changed meanwhile)": "starting over from the new tip",
        "backfill units written again": "writing them again",
    }

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.counts = dict.fromkeys(self.PATTERNS, 0)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for name, pattern in self.PATTERNS.items():
            if pattern in text:
                self.counts[name] += 1


@contextlib.contextmanager
def _counting_retries() -> Iterator[_Retries]:
    handler = _Retries()
    loggers = [logging.getLogger(n) for n in ("tasks.commit", "tasks.publish", "prefect")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("tasks.commit").setLevel(logging.INFO)
    logging.getLogger("tasks.publish").setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@contextlib.contextmanager
def _targets(kind: str) -> Iterator[Callable[[str], Any]]:
    """Fresh Targets on the local filesystem or on a new bucket of the S3 test server."""
    from flows import Target

    if kind == "local":
        yield lambda name: Target(repo=str(fresh(_BENCH[0], name)))
        return
    from tests.s3_server import s3_server

    with s3_server() as endpoint:

        def on_s3(name: str) -> Target:
            url, options = endpoint.fresh_bucket_options()
            return Target(repo=url, storage_options=options)

        yield on_s3


_BENCH: list[Bench] = []


def _read(target: Any) -> xr.Dataset:
    repo = target.open_repository()
    return xr.open_zarr(repo.readonly_session(target.branch).store, consolidated=False).load()


def _commits_rebased(target: Any) -> tuple[int, int]:
    """(commits, commits whose parent is not the base they were written on)."""
    repo = target.open_repository()
    commits = rebased = 0
    for snap in repo.ancestry(branch=target.branch):
        block = (snap.metadata or {}).get("icefloe") or {}
        base = block.get("base_snapshot")
        if base is None or block.get("mode") != "region":
            continue
        commits += 1
        rebased += snap.parent_id != base
    return commits, rebased


def _contention_backfill(bench: Bench, new_target: Callable[[str], Any], shape: TileShape,
                         windows: int, hours: int, batch: int) -> dict[str, Any]:  # fmt: skip
    from distributed import Client

    from flows import backfill_flow

    threads = sum(Client(bench.address, set_as_default=False).nthreads().values())
    end = START + pd.Timedelta(hours=windows * hours)
    out: dict[str, Any] = {"windows": windows, "hours_per_window": hours, "batch": batch}
    results = {}
    for label, in_flight in (("one window at a time", 1), (f"{batch} in flight", batch)):
        target = new_target(f"contention-backfill-{in_flight}")
        with _counting_retries() as retries:
            begun = time.perf_counter()
            result = backfill_flow(
                target, tiles_source(shape), start=START.to_pydatetime(), end=end.to_pydatetime(),
                freq=f"{hours}h", batch=in_flight, scheduler_address=bench.address,
            )  # fmt: skip
            wall = time.perf_counter() - begun
        stored = _read(target)
        expected = tiles(0, windows * hours, **shape.kwargs()).compute()
        results[label] = {
            "wall": wall,
            "result": result.model_dump(),
            "retries": retries.counts,
            "identical": bool(stored["v0"].equals(expected["v0"])),
            "stored": stored,
        }
        bench.log(f"   backfill {label}: {wall:.1f} s, {result.seconds}, {retries.counts}, "
                  f"identical {results[label]['identical']}")  # fmt: skip
    sequential, concurrent = results["one window at a time"], results[f"{batch} in flight"]
    window_bytes = shape.chunks_per_hour * hours * shape.tile * shape.tile * 4
    parallelism = min(batch, threads)
    ideal = sequential["result"]["seconds"]["write"] / parallelism
    out.update(
        parallelism=parallelism,
        ideal_seconds=ideal,
        write_seconds=concurrent["result"]["seconds"]["write"],
        ratio_to_ideal=concurrent["result"]["seconds"]["write"] / ideal,
        sequential={k: v for k, v in sequential.items() if k != "stored"},
        concurrent={k: v for k, v in concurrent.items() if k != "stored"},
        identical_to_sequential=bool(sequential["stored"].identical(concurrent["stored"])),
        rebased_commits=concurrent["result"]["rebased_commits"],
        bytes_rewritten_per_window=concurrent["result"]["windows_rewritten"] * window_bytes / windows,
    )  # fmt: skip
    return out


def _region_runs(bench: Bench, new_target: Callable[[str], Any], shape: TileShape, runs: int,
                 hours: int) -> dict[str, Any]:  # fmt: skip
    """``runs`` region_flow runs writing disjoint windows, one after the other and all at once."""
    import concurrent.futures

    from flows import backfill_flow, region_flow

    def prepared(name: str) -> Any:
        # the group and its whole time axis, empty but for the first hour
        target = new_target(name)
        backfill_flow(target, tiles_source(shape), start=START.to_pydatetime(),
                      end=(START + pd.Timedelta(hours=1)).to_pydatetime(), freq="1h",
                      scheduler_address=bench.address)  # fmt: skip
        from flows import append_flow

        append_flow(target, tiles_source(shape, first=1, periods=runs * hours - 1), "time",
                    scheduler_address=bench.address)  # fmt: skip
        return target

    def one(target: Any, k: int) -> float:
        begun = time.perf_counter()
        region_flow(target, tiles_source(shape, first=k * hours, periods=hours),
                    scheduler_address=bench.address)  # fmt: skip
        return time.perf_counter() - begun

    out: dict[str, Any] = {"runs": runs, "hours_per_run": hours}
    expected = tiles(0, runs * hours, **shape.kwargs()).compute()
    sequential_target = prepared("regions-sequential")
    with _counting_retries() as retries:
        begun = time.perf_counter()
        alone = [one(sequential_target, k) for k in range(runs)]
        sequential_wall = time.perf_counter() - begun
    out["sequential"] = {"wall": sequential_wall, "runs": alone, "retries": retries.counts}
    concurrent_target = prepared("regions-concurrent")
    failures: list[str] = []
    with _counting_retries() as retries, concurrent.futures.ThreadPoolExecutor(runs) as pool:
        begun = time.perf_counter()
        futures = [pool.submit(one, concurrent_target, k) for k in range(runs)]
        times = []
        for future in futures:
            try:
                times.append(future.result())
            except Exception as err:
                failures.append(f"{type(err).__name__}: {err}")
        wall = time.perf_counter() - begun
    commits, rebased = _commits_rebased(concurrent_target)
    stored_sequential, stored = _read(sequential_target), _read(concurrent_target)
    from distributed import Client

    threads = sum(Client(bench.address, set_as_default=False).nthreads().values())
    parallelism = min(runs, threads)
    ideal = sum(alone) / parallelism
    window_bytes = shape.chunks_per_hour * hours * shape.tile * shape.tile * 4
    out.update(
        concurrent={"wall": wall, "runs": times, "retries": retries.counts, "failures": failures},
        parallelism=parallelism,
        ideal_seconds=ideal,
        ratio_to_ideal=wall / ideal,
        commits=commits,
        rebased_commits=rebased,
        runs_started_over=retries.counts["run started over (arrays changed meanwhile)"],
        bytes_rewritten_per_window=retries.counts["run started over (arrays changed meanwhile)"]
        * window_bytes / runs,
        identical=bool(stored["v0"].equals(expected["v0"])),
        identical_to_sequential=bool(stored.identical(stored_sequential)),
    )  # fmt: skip
    bench.log(f"   {runs} region runs: sequential {sequential_wall:.1f} s, concurrent {wall:.1f} s, "
              f"ideal {ideal:.1f} s; {failures or 'no failures'}; {retries.counts}; rebased "
              f"{rebased}/{commits}; identical {out['identical']}")  # fmt: skip
    return out


def contention(bench: Bench) -> dict[str, Any]:
    """A backfill with many windows in flight and many region runs at once, on S3 and disk."""
    _BENCH[:] = [bench]
    shape = TileShape(ny=256, nx=256, tile=64)  # 16 chunks of 16 KiB an hour
    if bench.sizes == "small":
        windows, batch, runs, hours = 16, 4, 4, 4
    else:
        windows, batch, runs, hours = 64, 16, 16, 4
    out: dict[str, Any] = {"shape": shape.describe()}
    for kind in ("local", "s3"):
        bench.log(f"contention on {kind}: backfill of {windows} windows, {batch} in flight; "
                  f"{runs} region runs")  # fmt: skip
        with _targets(kind) as new_target:
            out[kind] = {
                "backfill": _contention_backfill(bench, new_target, shape, windows, hours, batch),
                "regions": _region_runs(bench, new_target, shape, runs, hours * windows // runs),
            }
    return out


def gc(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


_ = (dt, time)
