"""The sections of ``python -m benchmarks.scale``; each returns a JSON-ready dict."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import dask
import icechunk
import numpy as np
import pandas as pd
import xarray as xr

from benchmarks.scale import Bench, PeakRss, fresh
from benchmarks.scale_data import START, TileShape, tiles, tiles_source


def _open(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _same_as_source(
    repo: icechunk.Repository, shape: TileShape, first: int, periods: int, sample: int = 0
) -> bool:
    """The stored hours equal the source's; with ``sample``, only that many hours (the
    first, the last and some between), for archives too big to read back whole."""
    stored = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    if stored.sizes["time"] != periods:
        return False
    hours = list(range(periods))
    if sample and periods > sample:
        step = max(1, periods // sample)
        hours = sorted({0, periods - 1, *range(0, periods, step)})
    ok = np.array_equal(
        stored["time"].values, tiles(first, periods, **shape.kwargs())["time"].values
    )
    for start in range(0, len(hours), 256):
        picked = hours[start : start + 256]
        part = stored.isel(time=picked).compute()
        for hour, got in zip(picked, part["v0"].values, strict=True):
            expected = tiles(first + hour, 1, **shape.kwargs())["v0"].values[0]
            ok = ok and bool(np.array_equal(got, expected))
    return bool(ok)


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

    from flows.sources import PythonSource
    from flows.write import open_region_window
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
        per_unit = max(
            1, min(batch // (2 * threads), -(-len(spans) // (2 * threads)))
        )  # as the flow
        units = units_of(spans, [1], per_unit)
        begun = time.perf_counter()
        publisher = WindowPublisher(repo, "main")
        base, fork = publisher.fork()
        shared = client.scatter(fork, broadcast=True, hash=False)
        write = functools.partial(
            write_windows,
            open_window=functools.partial(open_region_window, source, "time"),
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


# -- shared helpers: flow runs and their tasks ---------------------------------------------------


def _task_seconds(flow_run_id: Any, name: str) -> list[tuple[float, float]]:
    """(start, end) as UNIX times of the task runs called ``name`` of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in runs
        if r.name.startswith(name) and r.start_time and r.end_time
    )


def _run_flow(flow: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The flow's result and its flow run id."""
    state = flow(*args, return_state=True, **kwargs)
    return state.result(), state.state_details.flow_run_id


SHARED: dict[str, Any] = {}  # what one section leaves to the next (the 1M-chunk archive)


# -- big change sets: one run writing many chunks ------------------------------------------------


def bigrun(bench: Bench) -> dict[str, Any]:
    """create_flow of 10k, 100k and 1M chunks of 1 KiB: memory of each process and commit time."""
    from flows import Target

    shape = TileShape(ny=160, nx=160, tile=16)  # 100 chunks an hour
    sizes = [10_000, 50_000] if bench.sizes == "small" else [10_000, 100_000, 1_000_000]
    rows = []
    for chunks in sizes:
        hours = shape.hours_for(chunks)
        path = fresh(bench, f"bigrun-{chunks}")
        bench.log(f"bigrun: create_flow of {chunks:,} chunks ({hours} hours of {shape.describe()})")
        # the flow in a process of its own, as a worker runs it: its memory is the run's
        proc = bench.flow_process(
            f"bigrun-{chunks}", "create_flow",
            target=Target(repo=str(path)).model_dump(mode="json"),
            source=tiles_source(shape, first=0, periods=hours, hourly_blocks=True),
            encoding=shape.encoding(), scheduler_address=bench.address,
        )  # fmt: skip
        processes = {
            "flow process": proc.pid,
            **{f"worker {i + 1}": pid for i, pid in enumerate(bench.cluster.worker_pids)},
            "scheduler": bench.cluster.scheduler_pid,
        }
        with PeakRss(processes, interval=0.2) as rss:
            proc.go()
            report = proc.wait()
        if report["state"] != "Completed":
            raise RuntimeError(f"create_flow of {chunks} chunks: {report['message']}")
        wall = report["ended"] - report["started"]
        run_id = report["flow_run_id"]
        commit = _task_seconds(run_id, "commit")
        lazy = _task_seconds(run_id, "write_lazy")
        during_commit = _peak_between(rss, *(commit[0] if commit else (0.0, 0.0)))
        written = report["result"]["chunks_written"]
        repo = _open(path)
        manifests = repo.list_manifest_files(repo.lookup_branch("main"))
        same = _same_as_source(repo, shape, 0, hours, sample=200)
        row = {
            "identical": same,
            "chunks": chunks,
            "written": written,
            "wall": wall,
            "commit_seconds": commit[0][1] - commit[0][0] if commit else None,
            "batches": len(lazy),
            "peak_rss": rss.peaks,
            "peak_rss_during_commit": during_commit,
            "manifests": len(manifests),
            "refs": sum(m.num_chunk_refs for m in manifests),
            "path": str(path),
        }
        bench.log(
            f"   {wall:.0f} s, commit {row['commit_seconds']:.1f} s, {len(lazy)} batches; peak RSS "
            + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in rss.peaks.items())
            + f"; during commit: flow process {during_commit.get('flow process', 0) / 1e9:.2f} GB"
        )
        rows.append(row)
        SHARED["archive"] = {"path": str(path), "hours": hours, "shape": shape, "chunks": chunks}
    return {"shape": shape.describe(), "rows": rows}


def _peak_between(rss: PeakRss, start: float, end: float) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for when, sample in rss.series:
        if start - 0.5 <= when <= end + 0.5:
            for name, value in sample.items():
                peaks[name] = max(peaks.get(name, 0), value)
    return peaks


# -- growth: commit latency as the archive grows ---------------------------------------------


def growth(bench: Bench) -> dict[str, Any]:
    """Appends of one hour into the big archive and into a young one, interleaved; commit
    time of each (the commit task of append_flow), with manifests split (the default) and
    with one manifest per array."""
    from flows import Target, append_flow, create_flow

    archive = SHARED.get("archive")
    shape = TileShape(ny=160, nx=160, tile=16)
    if archive is None:  # run alone: an archive of its own
        hours = shape.hours_for(100_000 if bench.sizes == "small" else 1_000_000)
        path = fresh(bench, "growth-old")
        bench.log(f"growth: creating the old archive, {hours * shape.chunks_per_hour:,} chunks")
        create_flow(Target(repo=str(path)),
                    tiles_source(shape, first=0, periods=hours, hourly_blocks=True),
                    encoding=shape.encoding(), scheduler_address=bench.address)  # fmt: skip
        archive = {"path": str(path), "hours": hours, "shape": shape}
        SHARED["archive"] = archive
    young_path = fresh(bench, "growth-young")
    young_hours = 24
    create_flow(Target(repo=str(young_path)),
                tiles_source(shape, first=0, periods=young_hours, hourly_blocks=True),
                encoding=shape.encoding(), scheduler_address=bench.address)  # fmt: skip
    repos = {
        "old": {"path": archive["path"], "next": archive["hours"]},
        "young": {"path": str(young_path), "next": young_hours},
    }
    appends = 12 if bench.sizes == "small" else 30
    unsplit = 3 if bench.sizes == "small" else 6
    phases = [
        # the default: the first append records the split and re-splits what exists
        ("split (default)", {}, appends),
        # one manifest per array, recorded; its first append merges the split ones again
        ("one manifest per array", {"split_size": 0}, unsplit),
    ]
    out: dict[str, Any] = {"shape": shape.describe(), "young_hours": young_hours, "phases": {}}
    for label, manifests, count in phases:
        records: dict[str, list[dict[str, float]]] = {"old": [], "young": []}
        for _k in range(count + 1):  # the first of each phase changes the layout: reported apart
            for name, state in repos.items():
                target = Target(repo=state["path"], manifests=manifests)
                begun = time.perf_counter()
                _, run_id = _run_flow(
                    append_flow, target,
                    tiles_source(shape, first=state["next"], periods=1, hourly_blocks=True),
                    "time", scheduler_address=bench.address,
                )  # fmt: skip
                wall = time.perf_counter() - begun
                state["next"] += 1
                (start, end), *_ = _task_seconds(run_id, "commit")
                records[name].append({"wall": wall, "commit": end - start})
        summary = {}
        for name, rows in records.items():
            steady = [r["commit"] for r in rows[1:]]
            summary[name] = {
                "first_commit": rows[0]["commit"],
                "commit_median": float(np.median(steady)),
                "commit_min": float(min(steady)),
                "commit_max": float(max(steady)),
                "wall_median": float(np.median([r["wall"] for r in rows[1:]])),
                "commits": [r["commit"] for r in rows],
            }
        old_repo = _open(Path(repos["old"]["path"]))
        summary["old_manifests"] = len(old_repo.list_manifest_files(old_repo.lookup_branch("main")))
        summary["ratio"] = summary["old"]["commit_median"] / summary["young"]["commit_median"]
        summary["old_chunks"] = repos["old"]["next"] * shape.chunks_per_hour
        out["phases"][label] = summary
        bench.log(
            f"   {label}: commit old {summary['old']['commit_median'] * 1000:.0f} ms vs young "
            f"{summary['young']['commit_median'] * 1000:.0f} ms → {summary['ratio']:.2f}× "
            f"(first: {summary['old']['first_commit']:.2f} s / {summary['young']['first_commit']:.2f} s)"
        )
    return out


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
    """``runs`` region_flow runs writing disjoint windows, each in a flow process of its
    own (as a Prefect worker runs them): one after the other, then all at once."""
    import uuid

    from flows import append_flow, backfill_flow

    def prepared(name: str) -> Any:
        # the group and its whole time axis, empty but for the first hour
        target = new_target(name)
        backfill_flow(target, tiles_source(shape), start=START.to_pydatetime(),
                      end=(START + pd.Timedelta(hours=1)).to_pydatetime(), freq="1h",
                      scheduler_address=bench.address)  # fmt: skip
        append_flow(target, tiles_source(shape, first=1, periods=runs * hours - 1), "time",
                    scheduler_address=bench.address)  # fmt: skip
        return target

    def started(target: Any, k: int) -> Any:
        return bench.flow_process(
            f"region-{k}-{uuid.uuid4().hex[:6]}",
            "region_flow",
            target=target.model_dump(mode="json"),
            source=tiles_source(shape, first=k * hours, periods=hours),
            scheduler_address=bench.address,
        )

    def counted(procs: list[Any]) -> dict[str, int]:
        return {
            name: sum(p.count(pattern) for p in procs)
            for name, pattern in _Retries.PATTERNS.items()
        }

    out: dict[str, Any] = {"runs": runs, "hours_per_run": hours}
    expected = tiles(0, runs * hours, **shape.kwargs()).compute()
    sequential_target = prepared("regions-sequential")
    alone, done, alone_cpu = [], [], 0.0
    services_before = bench.service_cpu()
    for k in range(runs):
        proc = started(sequential_target, k)
        proc.go()
        report = proc.wait()
        alone.append(report["ended"] - report["started"])
        alone_cpu += report["cpu_seconds"]
        done.append(proc)
    alone_services = bench.service_cpu() - services_before
    out["sequential"] = {"wall": sum(alone), "runs": alone, "retries": counted(done),
                         "flow_cpu_seconds": alone_cpu, "service_cpu_seconds": alone_services}  # fmt: skip
    concurrent_target = prepared("regions-concurrent")
    procs = [started(concurrent_target, k) for k in range(runs)]  # all imported, waiting
    services_before = bench.service_cpu()
    for proc in procs:
        proc.go()
    reports = [proc.wait() for proc in procs]
    services = bench.service_cpu() - services_before
    flow_cpu = sum(r["cpu_seconds"] for r in reports)
    failures = [f"{r['state']}: {r['message']}" for r in reports if r["state"] != "Completed"]
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    retries = counted(procs)
    commits, rebased = _commits_rebased(concurrent_target)
    stored_sequential, stored = _read(sequential_target), _read(concurrent_target)
    parallelism = min(runs, os.cpu_count() or 1)
    ideal = sum(alone) / parallelism
    window_bytes = shape.chunks_per_hour * hours * shape.tile * shape.tile * 4
    started_over = retries["run started over (arrays changed meanwhile)"]
    out.update(
        concurrent={"wall": wall, "runs": [r["ended"] - r["started"] for r in reports],
                    "retries": retries, "failures": failures, "flow_cpu_seconds": flow_cpu,
                    "service_cpu_seconds": services},
        # CPU the runs needed (flow processes, workers, scheduler, Prefect API) over the
        # cores: no schedule on this machine is faster than that
        cpu_floor_seconds=(flow_cpu + services) / (os.cpu_count() or 1),
        # the same runs one after the other needed this much CPU: with no contention at
        # all, no schedule on these cores finishes them sooner
        sequential_cpu_floor_seconds=(alone_cpu + alone_services) / (os.cpu_count() or 1),
        parallelism=parallelism,
        ideal_seconds=ideal,
        ratio_to_ideal=wall / ideal,
        ratio_to_machine_ideal=wall / max(ideal, (alone_cpu + alone_services) / (os.cpu_count() or 1)),
        commits=commits,
        rebased_commits=rebased,
        runs_started_over=started_over,
        bytes_rewritten_per_window=started_over * window_bytes / runs,
        identical=bool(stored["v0"].equals(expected["v0"])),
        identical_to_sequential=bool(stored.identical(stored_sequential)),
    )  # fmt: skip
    bench.log(f"   {runs} region runs: alone {sum(alone):.1f} s in all, at once {wall:.1f} s, "
              f"ideal {ideal:.1f} s → {wall / ideal:.2f}×, CPU floor {out['cpu_floor_seconds']:.1f} s; "
              f"{failures or 'no failures'}; {retries}; "
              f"rebased {rebased}/{commits}; identical {out['identical']}")  # fmt: skip
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


# -- garbage collection at scale -----------------------------------------------------------------


def gc(bench: Bench) -> dict[str, Any]:
    """maintenance_flow on the big archive after a few hundred more commits: peak RSS of the
    flow process (the collection runs in it) and what it removed."""
    from flows import Target, create_flow
    from tasks.writer import to_icechunk

    archive = SHARED.get("archive")
    shape = TileShape(ny=160, nx=160, tile=16)
    if archive is None:
        hours = shape.hours_for(50_000 if bench.sizes == "small" else 1_000_000)
        path = fresh(bench, "gc")
        create_flow(Target(repo=str(path)),
                    tiles_source(shape, first=0, periods=hours, hourly_blocks=True),
                    encoding=shape.encoding(), scheduler_address=bench.address)  # fmt: skip
        archive = {"path": str(path), "hours": hours}
    path = Path(archive["path"])
    repo = _open(path)
    stored = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    next_hour = int(stored.sizes["time"])
    snapshots = 60 if bench.sizes == "small" else 300
    rewrites = 10 if bench.sizes == "small" else 50
    bench.log(f"gc: {snapshots} one-hour appends and {rewrites} rewritten hours, then maintenance")
    begun = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        for k in range(snapshots):
            session = repo.writable_session("main")
            hour = tiles(next_hour + k, 1, **shape.kwargs(), hourly_blocks=True)
            to_icechunk(hour, session, append_dim="time")
            session.commit(f"gc benchmark: append {k}")
        for k in range(rewrites):
            # the same values again: the old chunks become garbage once their snapshots expire
            session = repo.writable_session("main")
            hour = tiles(k, 1, **shape.kwargs(), hourly_blocks=True)
            to_icechunk(hour, session, region="auto")
            session.commit(f"gc benchmark: rewrite hour {k}")
    history = time.perf_counter() - begun
    ancestry = list(repo.ancestry(branch="main"))
    time.sleep(1.0)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=500)
    proc = bench.flow_process(
        "gc", "maintenance_flow", target=Target(repo=str(path)).model_dump(mode="json"),
        older_than=cutoff.isoformat(), margin=0,
    )  # fmt: skip
    with PeakRss({"flow process": proc.pid}, interval=0.05) as rss:
        proc.go()
        report = proc.wait()
    if report["state"] != "Completed":
        raise RuntimeError(f"maintenance_flow: {report['message']}")
    seconds = report["ended"] - report["started"]
    result = report["result"]
    refs = sum(
        m.num_chunk_refs for m in _open(path).list_manifest_files(_open(path).lookup_branch("main"))
    )
    same = _same_as_source(_open(path), shape, 0, next_hour + snapshots, sample=200)
    out = {
        "chunks": refs,
        "snapshots_before": len(ancestry),
        "history_seconds": history,
        "maintenance_seconds": seconds,
        "peak_rss": rss.peaks["flow process"],
        "result": result,
        "identical_after": same,
    }
    bench.log(
        f"   {seconds:.1f} s, peak RSS {rss.peaks['flow process'] / 1e9:.2f} GB; expired "
        f"{result['snapshots_expired']}, deleted {result['chunks_deleted']} chunks, "
        f"{result['manifests_deleted']} manifests, {result['snapshots_deleted']} snapshots; "
        f"data intact {same}"
    )
    return out
