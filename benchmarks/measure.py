"""The measurements. Each returns a plain dict (JSON-ready) that ``benchmarks.report`` renders.

Paths that are compared run interleaved, in a rotating order, within one process and on
one dask cluster, so that a machine busy with something else slows all of them alike.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask
import icechunk
import icechunk.xarray
import pandas as pd
import zarr
from distributed import Client

from benchmarks.data import Shape, source_spec
from benchmarks.infra import ROOT, RssSampler, Samples, fresh_dir, stopwatch, subprocess_env

Log = Callable[[str], None]

# -- configuration -------------------------------------------------------------------------------

SMALL_GRID = {"ny": 90, "nx": 180}  # 2° grid: 4 variables × 4 hours ≈ 1 MB


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one benchmark run."""

    mode: str
    repeats: int
    bulk: Shape  # measurement 1 (and the 2 GB point of 4 and 6)
    scaling: tuple[Shape, ...]  # measured ``repeats`` times, with memory (4 and 6)
    memory_only: tuple[Shape, ...]  # measured once, memory and time (4 and 6)
    fixed: Shape  # the ~1 MB append of measurement 2 (its first window is the initial data)
    fixed_repeats: int
    appends: int  # measurement 3
    append_window: int
    append_grid: dict[str, int]
    resume: Shape  # measurement 5
    backfill: Shape  # measurement 7
    # measurement 8: archives of these many labels (the 10³ and 10⁶)
    post_commit_labels: tuple[int, int] = (1_000, 1_000_000)
    post_commit_repeats: int = 3
    heartbeats: bool = True  # smoke runs turn Prefect's flow heartbeats off (faster exits)
    resume_batches: int = 5
    resume_repeats: int = 3
    notes: tuple[str, ...] = field(default_factory=tuple)


def full_config(scale: float = 1.0, appends: int = 1000, largest_gb: float = 4.0) -> Config:
    """The issue's measurements, sized to run in about 12 minutes on 2 cores.

    ``scale`` multiplies every data size (not the small appends); ``largest_gb`` is the one
    size measured once (memory and time); ``appends`` is 1,000 in the issue.
    """
    gb = 1e9 * scale
    notes = [
        "Sizes were cut to fit about 12 minutes on this 2-core machine: the "
        f"{largest_gb * scale:g} GB point of measurements 4 and 6 runs once (the others three "
        "times)" + (", and 8 GB is not measured." if largest_gb * scale < 8 else ".")
    ]
    if scale != 1.0:
        notes.append(f"Every data size is scaled by {scale:g} from the issue's (--scale).")
    window = 100 if appends >= 1000 else max(1, appends // 6)
    if appends != 1000:
        notes.append(
            f"Measurement 3 runs {appends} appends instead of 1,000 and compares the first and "
            f"last {window} (--appends)."
        )
    return Config(
        mode="full",
        repeats=3,
        bulk=Shape.of_bytes(2 * gb),
        scaling=(Shape.of_bytes(0.5 * gb), Shape.of_bytes(1 * gb)),
        memory_only=(Shape.of_bytes(largest_gb * gb),),
        fixed=Shape(periods=4, time_chunk=4, **SMALL_GRID),
        fixed_repeats=5,
        appends=appends,
        append_window=window,
        append_grid={**SMALL_GRID, "time_chunk": 24},
        resume=Shape.of_bytes(1 * gb),
        backfill=Shape.of_bytes(0.8 * gb),  # four windows of 12 h
        notes=tuple(notes),
    )


def smoke_config() -> Config:
    small = {"ny": 45, "nx": 90, "time_chunk": 4}
    return Config(
        mode="smoke",
        repeats=1,
        bulk=Shape(periods=16, **small),
        scaling=(Shape(periods=8, **small),),
        memory_only=(),
        fixed=Shape(periods=4, **small),
        fixed_repeats=1,
        appends=8,
        append_window=3,
        append_grid={"ny": 9, "nx": 18, "time_chunk": 24},
        resume=Shape(periods=20, **small),
        resume_repeats=1,
        backfill=Shape(periods=16, **small),
        post_commit_labels=(100, 2_000),
        post_commit_repeats=1,
        heartbeats=False,
        notes=("Smoke mode runs every flow without Prefect's heartbeat thread.",),
    )


@dataclass
class Bench:
    """What the measurements share: the work directory, the cluster, the API and the log."""

    config: Config
    workdir: Path
    client: Client
    scheduler_address: str
    api_url: str
    log: Log

    @contextlib.contextmanager
    def on_cluster(self) -> Iterator[None]:
        """Plain dask computations in the block run on the benchmark's cluster."""
        with dask.config.set(scheduler=self.client):
            yield

    def repo(self, path: Path) -> icechunk.Repository:
        return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))

    def worker_pids(self) -> set[int]:
        info = self.client.scheduler_info()
        return {int(w["pid"]) for w in info.get("workers", {}).values() if "pid" in w}


def _rotated[T](items: list[T], by: int) -> list[T]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


# -- the writers being compared ------------------------------------------------------------------


def write_generate_only(bench: Bench, shape: Shape, path: Path) -> None:
    """Compute every block and reduce it, writing nothing: the cost of the data itself."""
    ds = shape.open()
    with bench.on_cluster():
        dask.compute(*(var.data.sum() for var in ds.data_vars.values()))


def write_to_zarr(bench: Bench, shape: Shape, path: Path) -> None:
    with bench.on_cluster():
        shape.open().to_zarr(str(path), mode="w-", consolidated=False, zarr_format=3)


def write_icechunk(bench: Bench, shape: Shape, path: Path) -> None:
    session = bench.repo(path).writable_session("main")
    with bench.on_cluster():
        icechunk.xarray.to_icechunk(shape.open(), session, mode="w-")
    session.commit("to_icechunk")


def write_library(bench: Bench, shape: Shape, path: Path) -> None:
    from tasks.writer import to_icechunk

    session = bench.repo(path).writable_session("main")
    with bench.on_cluster():
        to_icechunk(shape.open(), session, mode="w-")
    session.commit("icefloe library")


def write_create_flow(
    bench: Bench, shape: Shape, path: Path, options: dict[str, Any] | None = None
) -> Any:
    from flows import Target, create_flow
    from flows.write import RunOptions
    from tasks.cluster import on_scheduler

    flow = on_scheduler(create_flow, bench.scheduler_address)
    return flow(
        Target(repo=str(path)),
        source_spec(shape),
        scheduler_address=bench.scheduler_address,
        options=RunOptions(**(options or {})),
    )


BULK_PATHS: dict[str, Callable[[Bench, Shape, Path], Any]] = {
    "generate only (no write)": write_generate_only,
    "xarray to_zarr, plain Zarr": write_to_zarr,
    "icechunk.xarray.to_icechunk + commit": write_icechunk,
    "icefloe library (tasks.writer.to_icechunk) + commit": write_library,
    "icefloe create_flow (Prefect)": write_create_flow,
    "icefloe create_flow, RunOptions(batches=1)": lambda bench, shape, path: write_create_flow(
        bench, shape, path, {"batches": 1}
    ),
}
REFERENCE = "icechunk.xarray.to_icechunk + commit"
FLOW = "icefloe create_flow (Prefect)"


def _timed_write(
    bench: Bench, write: Callable[[Bench, Shape, Path], Any], shape: Shape, path: Path
) -> tuple[float, RssSampler]:
    with RssSampler(extra_pids=bench.worker_pids()) as rss, stopwatch() as elapsed:
        write(bench, shape, path)
    shutil.rmtree(path, ignore_errors=True)
    return elapsed(), rss


# -- 1. bulk create ------------------------------------------------------------------------------


def bulk_create(bench: Bench) -> dict[str, Any]:
    shape = bench.config.bulk
    bench.log(f"1. bulk create of {shape.nbytes / 1e9:.2f} GB: {shape.describe()}")
    times = {name: Samples() for name in BULK_PATHS}
    peaks = {name: Samples(unit="B") for name in BULK_PATHS}
    names = list(BULK_PATHS)
    for rep in range(bench.config.repeats):
        for name in _rotated(names, rep):
            seconds, rss = _timed_write(
                bench, BULK_PATHS[name], shape, fresh_dir(bench.workdir, "bulk")
            )
            times[name].add(seconds)
            peaks[name].add(rss.peak)
            bench.log(f"   {name}: {seconds:.2f} s, peak RSS {rss.peak / 1e9:.2f} GB")
    reference = times[REFERENCE].median
    return {
        "shape": asdict(shape),
        "describe": shape.describe(),
        "bytes": shape.nbytes,
        "rows": [
            {
                "path": name,
                "seconds": times[name].as_dict(),
                "mb_per_s": shape.nbytes / 1e6 / times[name].median,
                "ratio": times[name].median / reference,
                "peak_rss": peaks[name].as_dict(),
                "is_write": name != "generate only (no write)",
            }
            for name in names
        ],
        "flow_ratio": times[FLOW].median / reference,
        "flow_ratio_per_repeat": [
            f / r for f, r in zip(times[FLOW].values, times[REFERENCE].values, strict=True)
        ],
    }


# -- 2. fixed overhead ---------------------------------------------------------------------------


def _library_append(repo_path: Path, shape: Shape, client: Client | None) -> None:
    from tasks.writer import to_icechunk

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
    session = repo.writable_session("main")
    scheduler: Any = client if client is not None else "threads"
    with dask.config.set(scheduler=scheduler):
        to_icechunk(shape.open(), session, append_dim="time")
    session.commit(f"append {shape.first}")


def _library_create(repo_path: Path, shape: Shape) -> None:
    from tasks.writer import to_icechunk

    session = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(repo_path))
    ).writable_session("main")
    with dask.config.set(scheduler="threads"):
        to_icechunk(shape.open(), session, mode="w-")
    session.commit("initial")


def _trivial_flow() -> Any:
    from prefect import flow

    @flow(name="benchmark-trivial")
    def trivial() -> int:
        return 1

    return trivial


@contextlib.contextmanager
def no_heartbeats() -> Iterator[None]:
    """Flow runs without Prefect's heartbeat thread, whose 1 s sleeps a sync flow joins at exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def fixed_overhead(bench: Bench) -> dict[str, Any]:
    from flows import Target, append_flow
    from tasks.cluster import on_scheduler

    first = bench.config.fixed
    window = first.after(first.periods)
    bench.log(f"2. fixed overhead: {window.nbytes / 1e6:.2f} MB appends ({window.describe()})")
    flow = on_scheduler(append_flow, bench.scheduler_address)
    trivial = _trivial_flow()
    trivial()  # the first flow run of a process pays for imports and client set-up

    def created() -> Path:
        path = fresh_dir(bench.workdir, "fixed")
        _library_create(path, first)
        return path

    def append_with_flow(path: Path, shape: Shape = window) -> None:
        flow(
            Target(repo=str(path)),
            source_spec(shape),
            append_dim="time",
            scheduler_address=bench.scheduler_address,
        )

    def timed(run: Callable[[], Any]) -> float:
        with stopwatch() as elapsed:
            run()
        return elapsed()

    def run_flow() -> float:
        path = created()
        return timed(lambda: append_with_flow(path))

    def run_flow_quiet() -> float:
        path = created()
        with no_heartbeats():
            return timed(lambda: append_with_flow(path))

    def run_library() -> float:
        path = created()
        return timed(lambda: _library_append(path, window, bench.client))

    def run_back_to_back() -> float:
        path = created()
        append_with_flow(path)
        return timed(lambda: append_with_flow(path, window.after(first.periods)))

    paths: dict[str, Callable[[], float]] = {
        FIXED_FLOW: run_flow,
        FIXED_LIBRARY: run_library,
        "trivial Prefect flow (returns 1)": lambda: timed(trivial),
        "append_flow without Prefect's heartbeat thread": run_flow_quiet,
        "append_flow right after another append_flow on the same group": run_back_to_back,
    }
    times = {name: Samples() for name in paths}
    names = list(paths)
    for rep in range(bench.config.fixed_repeats):
        for name in _rotated(names, rep):
            times[name].add(paths[name]())
            bench.log(f"   {name}: {times[name].values[-1]:.2f} s")
    library = times[FIXED_LIBRARY].median
    return {
        "bytes": window.nbytes,
        "describe": window.describe(),
        "rows": [
            {"path": n, "seconds": times[n].as_dict(), "ratio": times[n].median / library}
            for n in names
        ],
        "flow_minus_library": times[FIXED_FLOW].median - library,
    }


FIXED_FLOW = "append_flow (Prefect server already running)"
FIXED_LIBRARY = "icefloe library append + commit"


# -- 3. append scaling ---------------------------------------------------------------------------


def append_scaling(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    grid = cfg.append_grid
    initial = Shape(periods=grid["time_chunk"], **grid)
    bench.log(
        f"3. append scaling: {cfg.appends} appends of 1 hour ({initial.step_bytes / 1e3:.0f} kB) "
        f"into chunks of {grid['time_chunk']} hours, library path, threaded dask"
    )
    path = fresh_dir(bench.workdir, "appends")
    _library_create(path, initial)
    # the control: during the last window, each append alternates with one into a young
    # group, so that a machine getting busier cannot pass for growth
    young = fresh_dir(bench.workdir, "appends-young")
    _library_create(young, initial)
    young_window = initial
    control: list[float] = []
    window = initial
    latencies: list[float] = []
    for i in range(cfg.appends):
        window = window.after(1)
        with stopwatch() as elapsed:
            _library_append(path, window, None)
        latencies.append(elapsed())
        if i >= cfg.appends - cfg.append_window:
            young_window = young_window.after(1)
            with stopwatch() as elapsed:
                _library_append(young, young_window, None)
            control.append(elapsed())
        if (i + 1) % max(1, cfg.appends // 10) == 0:
            recent = latencies[-cfg.append_window :]
            bench.log(f"   {i + 1} appends, median of the last: {statistics.median(recent):.3f} s")
    stored = zarr.open_group(
        icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
        .readonly_session("main")
        .store,
        mode="r",
    )["time"].shape[0]
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(young, ignore_errors=True)
    w = cfg.append_window
    first, last = statistics.median(latencies[:w]), statistics.median(latencies[-w:])
    return {
        "appends": cfg.appends,
        "window": w,
        "append_bytes": initial.step_bytes,
        "time_chunk": grid["time_chunk"],
        "grid": grid,
        "latencies": latencies,
        "first_median": first,
        "last_median": last,
        "first_range": [min(latencies[:w]), max(latencies[:w])],
        "last_range": [min(latencies[-w:]), max(latencies[-w:])],
        "ratio": last / first,
        "control_median": statistics.median(control),
        "control_range": [min(control), max(control)],
        "control_ratio": last / statistics.median(control),
        "stored_labels": stored,
    }


# -- 4 and 6. memory and size scaling ------------------------------------------------------------


def scaling(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    points: dict[int, dict[str, Any]] = {}

    def record(shape: Shape, seconds: float, peak: int, baseline: int) -> None:
        point = points.setdefault(
            shape.nbytes,
            {
                "bytes": shape.nbytes,
                "periods": shape.periods,
                "seconds": Samples(),
                "peak": Samples(unit="B"),
                "baseline": Samples(unit="B"),
            },
        )
        point["seconds"].add(seconds)
        point["peak"].add(peak)
        point["baseline"].add(baseline)

    bench.log("4/6. create_flow at several sizes: time and peak RSS of all processes")
    # every size in every repeat, in rotating order, so that the machine's load drifting
    # during the run spreads over all sizes; the largest runs once, in the middle repeat
    sizes = [*cfg.scaling, cfg.bulk]
    for rep in range(cfg.repeats):
        todo = _rotated(sizes, rep)
        if rep == cfg.repeats // 2:
            todo += list(cfg.memory_only)
        for shape in todo:
            seconds, rss = _timed_write(
                bench, write_create_flow, shape, fresh_dir(bench.workdir, "scale")
            )
            record(shape, seconds, rss.peak, rss.baseline)
            bench.log(
                f"   {shape.nbytes / 1e9:.2f} GB: {seconds:.2f} s, peak RSS {rss.peak / 1e9:.2f} GB"
            )
    rows = []
    for nbytes in sorted(points):
        p = points[nbytes]
        rows.append(
            {
                "bytes": nbytes,
                "periods": p["periods"],
                "repeats": len(p["seconds"].values),
                "seconds": p["seconds"].as_dict(),
                "s_per_gb": p["seconds"].median / (nbytes / 1e9),
                "mb_per_s": nbytes / 1e6 / p["seconds"].median,
                "peak_rss": p["peak"].as_dict(),
                "baseline_rss": p["baseline"].as_dict(),
            }
        )
    fit = _linear_fit([r["bytes"] / 1e9 for r in rows], [r["seconds"]["median"] for r in rows])
    return {"rows": rows, "fit": fit}


def _linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least squares ``y = fixed + per_gb · x``, and the largest relative residual."""
    if len(xs) < 2:
        return None
    slope, intercept = statistics.linear_regression(xs, ys)
    worst = max(abs(y - (intercept + slope * x)) / y for x, y in zip(xs, ys, strict=True))
    return {"fixed_s": intercept, "s_per_gb": slope, "worst_residual": worst}


# -- 5. resume -----------------------------------------------------------------------------------


def resume(bench: Bench) -> dict[str, Any]:
    import tasks.batches

    cfg = bench.config
    shape = cfg.resume
    bench.log(
        f"5. resume: {shape.nbytes / 1e9:.2f} GB in {cfg.resume_batches} batches, killed before "
        f"the last one, then re-run with its key"
    )
    full, rerun, killed = Samples(), Samples(), Samples()
    rewritten: list[int] = []
    options = {"batches": cfg.resume_batches, "serialize": False}
    for _ in range(cfg.resume_repeats):
        path = fresh_dir(bench.workdir, "resume-full")
        with stopwatch() as elapsed:
            write_create_flow(bench, shape, path, {**options, "run_key": uuid.uuid4().hex})
        full.add(elapsed())
        shutil.rmtree(path, ignore_errors=True)

        path = fresh_dir(bench.workdir, "resume-killed")
        key = uuid.uuid4().hex
        with stopwatch() as elapsed:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.kill",
                    str(path),
                    bench.scheduler_address,
                    json.dumps(asdict(shape)),
                    key,
                    str(cfg.resume_batches),
                ],
                env=subprocess_env(bench.api_url),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        if done.returncode != -9:
            raise RuntimeError(f"the run was not killed:\n{done.stdout}\n{done.stderr}")
        killed.add(elapsed())

        counted: list[int] = []
        original = tasks.batches.write_batch

        def counting(
            *args: Any, _orig: Any = original, _counted: list[int] = counted, **kwargs: Any
        ) -> Any:
            _counted.append(1)
            return _orig(*args, **kwargs)

        tasks.batches.write_batch = counting
        try:
            with stopwatch() as elapsed:
                write_create_flow(bench, shape, path, {**options, "run_key": key})
        finally:
            tasks.batches.write_batch = original
        rerun.add(elapsed())
        rewritten.append(len(counted))
        ok = _same_data(path, shape)
        shutil.rmtree(path, ignore_errors=True)
        bench.log(
            f"   full {full.values[-1]:.2f} s; killed run {killed.values[-1]:.2f} s (own process, "
            f"with start-up); re-run {rerun.values[-1]:.2f} s rewrote {len(counted)} "
            f"batch(es); data exact: {ok}"
        )
        if not ok:
            raise AssertionError("the resumed run did not store the source's data")
    return {
        "bytes": shape.nbytes,
        "batches": cfg.resume_batches,
        "full": full.as_dict(),
        "killed": killed.as_dict(),
        "rerun": rerun.as_dict(),
        "ratio": rerun.median / full.median,
        "batches_rewritten": rewritten,
    }


def _same_data(path: Path, shape: Shape) -> bool:
    """The committed arrays equal the source (checked on a few samples of every variable)."""
    import numpy as np

    store = (
        icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
        .readonly_session("main")
        .store
    )
    group = zarr.open_group(store, mode="r")
    source = shape.open()
    for name, var in source.data_vars.items():
        stored = group[str(name)]
        if stored.shape != var.shape:
            return False
        for t in sorted({0, shape.periods // 2, shape.periods - 1}):
            if not np.array_equal(stored[t], var.data[t].compute(scheduler="threads")):
                return False
    return True


# -- 7. backfill ---------------------------------------------------------------------------------


def _find_backfill() -> Any:
    import flows

    for info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{info.name}")
        if hasattr(module, "backfill_flow"):
            return module.backfill_flow
    return None


def backfill(bench: Bench) -> dict[str, Any]:
    """backfill_flow over a range vs the loop a user would write (library appends, window by
    window) and vs one create_flow of the whole range."""
    from flows import Target

    backfill_flow = _find_backfill()
    if backfill_flow is None:
        bench.log("7. backfill: skipped, flows/ has no backfill_flow yet")
        return {"skipped": True, "reason": "flows/ has no `backfill_flow` yet"}
    cfg = bench.config
    shape = cfg.backfill
    # four windows, each a whole number of chunks
    hours = max(shape.time_chunk, shape.periods // 4 // shape.time_chunk * shape.time_chunk)
    windows = [
        Shape(
            min(hours, shape.periods - k), shape.ny, shape.nx, shape.time_chunk, shape.variables, k
        )
        for k in range(0, shape.periods, hours)
    ]
    start = pd.Timestamp("2020-01-01")
    end = start + pd.Timedelta(hours=shape.periods)
    bench.log(
        f"7. backfill: {shape.nbytes / 1e9:.2f} GB as {len(windows)} windows of {hours} h "
        f"({shape.describe()})"
    )

    from tasks.cluster import on_scheduler

    flow = on_scheduler(backfill_flow, bench.scheduler_address)

    def run_backfill(path: Path) -> None:
        flow(
            Target(repo=str(path)),
            {
                **source_spec(shape),
                "kwargs": {
                    k: v for k, v in shape.kwargs().items() if k not in ("first", "periods")
                },
            },
            start=start.to_pydatetime(),
            end=end.to_pydatetime(),
            freq=f"{hours}h",
            scheduler_address=bench.scheduler_address,
        )

    def run_loop(path: Path) -> None:
        _library_create_on(path, windows[0], bench.client)
        for window in windows[1:]:
            _library_append(path, window, bench.client)

    def run_create(path: Path) -> None:
        write_create_flow(bench, shape, path)

    paths: dict[str, Callable[[Path], None]] = {
        "backfill_flow": run_backfill,
        "library loop: create first window, append the others": run_loop,
        "create_flow of the whole range at once": run_create,
    }
    times = {name: Samples() for name in paths}
    names = list(paths)
    try:
        for rep in range(cfg.repeats):
            for name in _rotated(names, rep):
                path = fresh_dir(bench.workdir, "backfill")
                with stopwatch() as elapsed:
                    paths[name](path)
                if not _same_data(path, shape):
                    raise AssertionError(f"{name} did not store the source's data")
                shutil.rmtree(path, ignore_errors=True)
                times[name].add(elapsed())
                bench.log(f"   {name}: {elapsed():.2f} s")
    except Exception as err:  # backfill_flow is young: report it rather than lose the run
        bench.log(f"   backfill failed: {type(err).__name__}: {err}")
        return {"skipped": True, "reason": f"backfill_flow raised {type(err).__name__}: {err}"}
    loop = times[names[1]].median
    return {
        "bytes": shape.nbytes,
        "describe": shape.describe(),
        "windows": len(windows),
        "window_hours": hours,
        "rows": [
            {"path": n, "seconds": times[n].as_dict(), "ratio": times[n].median / loop}
            for n in names
        ],
    }


def _library_create_on(repo_path: Path, shape: Shape, client: Client) -> None:
    from tasks.writer import to_icechunk

    session = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(repo_path))
    ).writable_session("main")
    with dask.config.set(scheduler=client):
        to_icechunk(shape.open(), session, mode="w-")
    session.commit("initial")


# -- 8. after the commit -------------------------------------------------------------------------

POST_COMMIT_GRID = {"ny": 4, "nx": 4, "time_chunk": 24, "variables": 2}


def _labelled_archive(path: Path, periods: int) -> None:
    """A group of ``periods`` hourly labels (chunks of a day) with one gap of 48 labels.

    Written with plain ``icechunk.xarray.to_icechunk`` from numpy, no dask: 10⁶ labels
    take about a minute instead of a quarter of an hour through the lazy generator. The
    values are cheap stand-ins; the coordinates are the PythonSource's, so a scheduled
    append from it continues the archive. Its commit carries no coverage record, as an
    archive written before icefloe recorded coverage.
    """
    import numpy as np

    from benchmarks.data import weather

    ds = weather(periods=periods, **POST_COMMIT_GRID)
    shape = (periods, POST_COMMIT_GRID["ny"], POST_COMMIT_GRID["nx"])
    values = np.broadcast_to(np.arange(periods, dtype=np.float32)[:, None, None], shape).copy()
    hole = slice(periods // 2, periods // 2 + 48)
    values[hole] = np.nan  # a whole chunk and parts of its neighbours: judged label by label
    ds = ds.copy(data={name: values for name in ds.data_vars})
    chunks = (POST_COMMIT_GRID["time_chunk"], *shape[1:])
    session = icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path))
    ).writable_session("main")
    icechunk.xarray.to_icechunk(
        ds, session, mode="w-", encoding={str(n): {"chunks": chunks} for n in ds.data_vars}
    )
    session.commit("an archive written before icefloe recorded coverage")


def _post_commit_seconds(flow_run_id: Any) -> tuple[float, float]:
    """(whole run, from the end of its commit task to the end of the run), from Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        # the scheduled run calls append_flow, a run of its own where the commit task runs
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        ids = [flow_run_id, *(child.id for child in children)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    (commit,) = [t for t in tasks if t.name == "commit"]
    if run.start_time is None or run.end_time is None or commit.end_time is None:
        raise RuntimeError(f"run {flow_run_id} has no start or end time")
    return (
        (run.end_time - run.start_time).total_seconds(),
        (run.end_time - commit.end_time).total_seconds(),
    )


def post_commit(bench: Bench) -> dict[str, Any]:
    """What a scheduled append does after its commit, in archives of 10³ and 10⁶ labels.

    The flow path: ``scheduled_append_flow`` appending one label, its post-commit time
    read from Prefect (commit task end → run end: the coverage read from the commit's
    record, its markdown table and PNG published as artifacts, and the validate subflow).
    Beside it, the parts on their own (the record computed at commit, the coverage read
    and drawn, the validation's checks) and the direct alternative that every run paid
    before: judging every label again.
    """
    from flows import Target, scheduled_append_flow
    from tasks.cluster import on_scheduler
    from tasks.coverage import CoverageChange, coverage, coverage_record, full_coverage
    from tasks.validation import validate

    cfg = bench.config
    sizes = list(cfg.post_commit_labels)
    bench.log(
        f"8. after the commit: scheduled appends of one label into archives of "
        f"{' and '.join(f'{n:,}' for n in sizes)} labels"
    )
    flow = on_scheduler(scheduled_append_flow, bench.scheduler_address)
    paths = {n: fresh_dir(bench.workdir, f"post-commit-{n}") for n in sizes}
    stored = dict.fromkeys(sizes, 0)
    for n, path in paths.items():
        with stopwatch() as elapsed:
            _labelled_archive(path, n)
        stored[n] = n
        bench.log(f"   archive of {n:,} labels written in {elapsed():.1f} s")
    quantities = (
        "run",
        "after_commit",
        "record",
        "read_and_draw",
        "validation",
        "full_judgement",
    )
    samples = {n: {q: Samples() for q in quantities} for n in sizes}

    def append_one(n: int, first_record: bool) -> None:
        path = paths[n]
        source = {
            "kind": "python",
            "function": "benchmarks.data:weather",
            "kwargs": {**POST_COMMIT_GRID, "periods": stored[n] + 10},
        }
        until = pd.Timestamp("2020-01-01") + pd.Timedelta(hours=stored[n])
        state = flow(
            Target(repo=str(path)),
            source,
            scheduled_time=until.to_pydatetime(),
            scheduler_address=bench.scheduler_address,
            return_state=True,
        )
        if not state.is_completed():
            raise RuntimeError(f"the scheduled append failed: {state.message}")
        stored[n] += 1
        run, after = _post_commit_seconds(state.state_details.flow_run_id)
        if first_record:  # judged whole once: the archive had no record yet
            bench.log(f"   {n:,} labels: first run (records coverage, judged whole) {run:.2f} s")
            return
        samples[n]["run"].add(run)
        samples[n]["after_commit"].add(after)
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
        tip = repo.readonly_session("main")
        with stopwatch() as elapsed:  # the last label judged again on the record of the tip
            coverage_record(
                repo, tip, CoverageChange(None, "time", {"time": (stored[n] - 1, stored[n])})
            )
        samples[n]["record"].add(elapsed())
        with stopwatch() as elapsed:
            found = coverage(repo)
            found.markdown()
            found.plot(str(path / "coverage.png"))
        samples[n]["read_and_draw"].add(elapsed())
        with stopwatch() as elapsed:  # the checks the run's validate subflow makes
            validate(repo)
        samples[n]["validation"].add(elapsed())
        if len(samples[n]["full_judgement"].values) < (1 if n == max(sizes) else cfg.repeats):
            with stopwatch() as elapsed:
                judged = full_coverage(tip)
                judged.markdown()
                judged.plot(str(path / "coverage.png"))
            samples[n]["full_judgement"].add(elapsed())
            if judged != found:
                raise AssertionError(f"the record differs from judging every label: {found}")
        bench.log(
            f"   {n:,} labels: run {run:.2f} s, after its commit {after:.2f} s; record "
            f"{samples[n]['record'].values[-1] * 1e3:.0f} ms, read and draw "
            f"{samples[n]['read_and_draw'].values[-1] * 1e3:.0f} ms"
        )

    for n in sizes:
        append_one(n, first_record=True)
    for rep in range(cfg.post_commit_repeats):
        for n in _rotated(sizes, rep):
            append_one(n, first_record=False)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    small, large = sizes
    return {
        "grid": POST_COMMIT_GRID,
        "rows": [{"labels": n, **{q: samples[n][q].as_dict() for q in quantities}} for n in sizes],
        "ratios": {q: samples[large][q].median / samples[small][q].median for q in quantities},
    }
