"""The measurements. Each returns a plain dict (JSON-ready) that ``benchmarks.report`` renders.

Paths that are compared run interleaved, in a rotating order (A B C, B C A, C A B, ...),
within one process and on one dask cluster, so that a machine busy with something else
slows all of them alike. Every timed run goes through ``Bench.timed``: it waits (bounded)
for a quiet second, records the load average before and after and the cores other work used
meanwhile, and repeats a run that other work disturbed (``benchmarks.infra.Conditions``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import pkgutil
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import icechunk
import icechunk.xarray
import pandas as pd
import zarr
from distributed import Client

from benchmarks.codecs import compare as compare_codecs
from benchmarks.data import Shape, source_spec
from benchmarks.infra import (
    ROOT,
    Conditions,
    OtherWork,
    RssSampler,
    Samples,
    fresh_dir,
    stopwatch,
    subprocess_env,
)

Log = Callable[[str], None]

# -- configuration -------------------------------------------------------------------------------

SMALL_GRID = {"ny": 90, "nx": 180}  # 2° grid: 4 variables × 4 hours ≈ 1 MB
# What a quiet run must not print: Python's and Prefect's levels, and icechunk's (Rust) one.
NOT_QUIET = ("WARNING", "ERROR", " WARN ", "Traceback")


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one benchmark run."""

    mode: str
    repeats: int  # every comparison: bulk create, small writes, demo
    bulk: Shape  # measurement 1 (and the 2 GB point of 4 and 6)
    scaling: tuple[Shape, ...]  # measured ``scaling_repeats`` times, with memory (4 and 6)
    memory_only: tuple[Shape, ...]  # measured once, memory and time (4 and 6)
    small: Shape  # the ~1 MB append of measurement 2 (its first window is the initial data)
    appends: int  # measurement 3
    append_window: int
    append_grid: dict[str, int]
    resume: Shape  # measurement 5
    backfill: Shape  # measurement 7
    # measurement 8: archives of these many labels (the 10³ and 10⁶)
    post_commit_labels: tuple[int, int] = (1_000, 1_000_000)
    post_commit_repeats: int = 5
    demo_days: int = 7
    heartbeats: bool = True  # smoke runs turn Prefect's flow heartbeats off (faster exits)
    scaling_repeats: int = 3
    resume_batches: int = 5
    resume_repeats: int = 3
    backfill_repeats: int = 3
    notes: tuple[str, ...] = field(default_factory=tuple)


def full_config(scale: float = 1.0, appends: int = 300, largest_gb: float = 4.0) -> Config:
    """The issue's measurements, sized to run in about 15 minutes on 2 cores.

    ``scale`` multiplies every data size (not the small appends); ``largest_gb`` is the one
    size measured once (memory and time); ``appends`` was 1,000 in the issue that asked for
    measurement 3.
    """
    gb = 1e9 * scale
    notes = [
        "Sizes were cut to fit about 15 minutes on this 2-core machine: the "
        f"{largest_gb * scale:g} GB point of measurements 4 and 6 runs once, the other sizes "
        "three times" + (", and 8 GB is not measured." if largest_gb * scale < 8 else ".")
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
        repeats=5,
        bulk=Shape.of_bytes(2 * gb),
        scaling=(Shape.of_bytes(0.5 * gb), Shape.of_bytes(1 * gb)),
        memory_only=(Shape.of_bytes(largest_gb * gb),),
        small=Shape(periods=4, time_chunk=4, **SMALL_GRID),
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
        small=Shape(periods=4, **small),
        appends=8,
        append_window=3,
        append_grid={"ny": 9, "nx": 18, "time_chunk": 24},
        resume=Shape(periods=20, **small),
        backfill=Shape(periods=16, **small),
        post_commit_labels=(100, 2_000),
        post_commit_repeats=1,
        demo_days=1,
        heartbeats=False,
        scaling_repeats=1,
        resume_repeats=1,
        backfill_repeats=1,
        notes=("Smoke mode runs every flow without Prefect's heartbeat thread.",),
    )


@dataclass
class Bench:
    """What the measurements share: the work directory, the cluster, the API, the log, the
    machine's conditions and, optionally, a checkout of an earlier icefloe to compare with."""

    config: Config
    workdir: Path
    client: Client
    scheduler_address: str
    api_url: str
    log: Log
    conditions: Conditions = field(default_factory=Conditions)
    before: Path | None = None  # a source tree of the icefloe to compare with (--before)
    before_ref: str | None = None

    @contextlib.contextmanager
    def on_cluster(self) -> Iterator[None]:
        """Plain dask computations in the block run on the benchmark's cluster."""
        with dask.config.set(scheduler=self.client):
            yield

    def repo(self, path: Path) -> icechunk.Repository:
        return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))

    def worker_pids(self) -> set[int]:
        # scheduler_info() no longer carries the workers' pids: ask the workers
        return {int(pid) for pid in self.client.run(os.getpid).values()}

    def timed(
        self, run: Callable[[], float | None], retries: int | None = None
    ) -> tuple[float, dict[str, Any]]:
        """``run``'s seconds (its own figure if it returns one) and the machine's conditions."""
        return self.conditions.measure(run, retries)

    def note(self, name: str, seconds: float, record: dict[str, Any], extra: str = "") -> None:
        flag = " BUSY" if record["busy"] else ""
        self.log(
            f"   {name}: {seconds:.2f} s{extra} (others {record['others_during']:.2f} cores, "
            f"load {record['load_before'][0]:.1f}→{record['load_after'][0]:.1f}, "
            f"try {record['tries']}){flag}"
        )


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
    bench: Bench,
    shape: Shape,
    path: Path,
    options: dict[str, Any] | None = None,
    encoding: dict[str, dict[str, Any]] | None = None,
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
        encoding=encoding,
    )


def zarr_default_compressors(shape: Shape) -> dict[str, dict[str, Any]]:
    """create_flow's encoding that stores every variable with zarr's default compressor, as
    to_icechunk does: the same write with the same codec (JSON, as the UI would send it)."""
    zstd = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
    return {name: {"compressors": [zstd]} for name in shape.open().data_vars}


BULK_PATHS: dict[str, Callable[[Bench, Shape, Path], Any]] = {
    "generate only (no write)": write_generate_only,
    "xarray to_zarr, plain Zarr": write_to_zarr,
    "icechunk.xarray.to_icechunk + commit": write_icechunk,
    "icefloe library (tasks.writer.to_icechunk) + commit": write_library,
    "icefloe create_flow (Prefect)": write_create_flow,
    "icefloe create_flow, RunOptions(batches=1)": lambda bench, shape, path: write_create_flow(
        bench, shape, path, {"batches": 1}
    ),
    "icefloe create_flow, zarr's default compressors": lambda bench, shape, path: write_create_flow(
        bench, shape, path, encoding=zarr_default_compressors(shape)
    ),
}
REFERENCE = "icechunk.xarray.to_icechunk + commit"
FLOW = "icefloe create_flow (Prefect)"
SAME_CODEC_FLOW = "icefloe create_flow, zarr's default compressors"


@dataclass
class TimedWrite:
    seconds: float
    conditions: dict[str, Any]
    rss: RssSampler
    stored_bytes: int  # what the write left on disk


def _timed_write(
    bench: Bench, write: Callable[[Bench, Shape, Path], Any], shape: Shape
) -> TimedWrite:
    """One write into a new path, timed with the machine's conditions and the peak RSS;
    its size is taken and the path removed afterwards, outside the timing."""
    done: list[tuple[RssSampler, int]] = []

    def run() -> float:
        path = fresh_dir(bench.workdir, "write")
        with RssSampler(extra_pids=bench.worker_pids()) as rss, stopwatch() as elapsed:
            write(bench, shape, path)
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        done.append((rss, stored))
        return elapsed()

    seconds, record = bench.timed(run)
    rss, stored = done[-1]
    return TimedWrite(seconds, record, rss, stored)


# -- 1. bulk create ------------------------------------------------------------------------------


def bulk_create(bench: Bench) -> dict[str, Any]:
    shape = bench.config.bulk
    bench.log(f"1. bulk create of {shape.nbytes / 1e9:.2f} GB: {shape.describe()}")
    times = {name: Samples() for name in BULK_PATHS}
    peaks = {name: Samples(unit="B") for name in BULK_PATHS}
    stored = {name: 0 for name in BULK_PATHS}
    names = list(BULK_PATHS)
    for rep in range(bench.config.repeats):
        for name in _rotated(names, rep):
            done = _timed_write(bench, BULK_PATHS[name], shape)
            times[name].add(done.seconds, done.conditions)
            peaks[name].add(done.rss.peak)
            stored[name] = done.stored_bytes
            bench.note(
                name, done.seconds, done.conditions, f", peak RSS {done.rss.peak / 1e9:.2f} GB"
            )
    reference = times[REFERENCE].median

    def paired(name: str) -> list[float]:
        return [f / r for f, r in zip(times[name].values, times[REFERENCE].values, strict=True)]

    per_repeat = paired(FLOW)
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
                "stored_bytes": stored[name],
            }
            for name in names
        ],
        "flow_ratio": times[FLOW].median / reference,
        "flow_ratio_per_repeat": per_repeat,
        "flow_ratio_paired": _spread(per_repeat),
        "flow_ratio_quiet": _quiet_ratios(times[FLOW], times[REFERENCE]),
        "same_codec_ratio_paired": _spread(paired(SAME_CODEC_FLOW)),
        "codecs": compare_codecs(shape),
        "worker_settings": worker_settings(bench),
    }


def worker_settings(bench: Bench) -> dict[str, Any]:
    """Half the bulk write through to_icechunk and the library, on the benchmark's cluster
    (dask's worker settings, as on a cluster of the user's) and on a LocalCluster of the
    same size whose workers icefloe starts as it starts its own (``WriterNanny``)."""
    from distributed import LocalCluster

    from tasks.cluster import local_cluster_kwargs

    bulk = bench.config.bulk
    shape = replace(
        bulk, periods=max(bulk.time_chunk, bulk.periods // 2 // bulk.time_chunk * bulk.time_chunk)
    )
    writers = {"to_icechunk": write_icechunk, "icefloe library": write_library}
    # started as icefloe starts its own, at the benchmark cluster's size
    icefloe_cluster = {**local_cluster_kwargs(), "n_workers": 2}
    with (
        LocalCluster(**icefloe_cluster) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        benches = {
            "dask's defaults": bench,
            "icefloe's LocalCluster": replace(bench, client=client),
        }
        times = {(c, w): Samples() for c in benches for w in writers}
        peaks = {key: Samples(unit="B") for key in times}
        for rep in range(max(1, bench.config.repeats - 2)):
            for cluster_name, writer_name in _rotated(list(times), rep):
                done = _timed_write(benches[cluster_name], writers[writer_name], shape)
                times[cluster_name, writer_name].add(done.seconds, done.conditions)
                peaks[cluster_name, writer_name].add(done.rss.peak)
                bench.note(
                    f"{writer_name} on {cluster_name}",
                    done.seconds,
                    done.conditions,
                    f", peak RSS {done.rss.peak / 1e9:.2f} GB",
                )
    return {
        "bytes": shape.nbytes,
        "rows": [
            {
                "cluster": c,
                "writer": w,
                "seconds": samples.as_dict(),
                "peak_rss": peaks[c, w].as_dict(),
            }
            for (c, w), samples in times.items()
        ],
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return Samples(values=list(values)).as_dict() | {"conditions": []}


def _quiet_ratios(flow: Samples, reference: Samples) -> dict[str, Any] | None:
    """The paired ratios of the repeats in which neither path was disturbed."""
    pairs = [
        f / r
        for f, r, fc, rc in zip(
            flow.values, reference.values, flow.conditions, reference.conditions, strict=True
        )
        if not fc["busy"] and not rc["busy"]
    ]
    return _spread(pairs) if pairs else None


# -- 2. small writes -----------------------------------------------------------------------------


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


@contextlib.contextmanager
def no_heartbeats() -> Iterator[None]:
    """Flow runs without Prefect's heartbeat thread, whose 1 s sleeps a sync flow joins at exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _cli(tree: Path | None) -> list[str]:
    """The ``icefloe`` command of this build (its console script), or of the source tree
    ``tree`` (put first on PYTHONPATH by ``_run_cli``)."""
    if tree is None:
        return [str(Path(sys.executable).with_name("icefloe"))]
    entry = (
        "from flows.launch import main; main()"
        if (tree / "flows" / "launch.py").exists()
        else "from flows.cli import app; app()"
    )
    return [sys.executable, "-c", f"import sys; sys.argv[0] = 'icefloe'; {entry}"]


def _run_cli(
    tree: Path | None, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    if tree is not None:
        env = {**env, "PYTHONPATH": os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])}
    # as on a user's machine, Python keeps the bytecode it compiled (this sandbox sets the
    # variable, which would recompile every module of the command on every run)
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [*_cli(tree), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"icefloe {' '.join(args[:1])} failed:\n{done.stdout}\n{done.stderr}")
    return done


def _noisy(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(word in line for word in NOT_QUIET)]


def small_writes(bench: Bench) -> dict[str, Any]:
    """A ~1 MB append end to end, through the CLI against the running server, through
    append_flow in this process and through the library; and a scheduled append that finds
    nothing new (its flow run's time, as the Prefect UI shows it)."""
    from flows import Target, append_flow, scheduled_append_flow
    from tasks.cluster import on_scheduler

    first = bench.config.small
    window = first.after(first.periods)
    bench.log(f"2. small writes: {window.nbytes / 1e6:.2f} MB appends ({window.describe()})")
    flow_env = {
        k: v for k, v in subprocess_env(bench.api_url).items() if k != "ICEFLOE_SCHEDULER_ADDRESS"
    }
    source_json = json.dumps(source_spec(window))

    def created() -> Path:
        path = fresh_dir(bench.workdir, "small")
        _library_create(path, first)
        return path

    def cli_append(tree: Path | None, daemon: WarmDaemon | None = None) -> Callable[[], float]:
        env = daemon.env if daemon is not None else {**flow_env, "ICEFLOE_DAEMON": "0"}

        def run() -> float:
            path = created()
            args = ["append", "--target", str(path), "--source", source_json]
            with stopwatch() as elapsed:
                _run_cli(tree, args, env, bench.workdir)
            seconds = elapsed()
            if daemon is not None:
                # the next spare imports now: let it finish before anything else is timed
                daemon.wait_for_spare()
            return seconds

        return run

    def flow_append() -> float:
        path = created()
        with stopwatch() as elapsed:
            append_flow(Target(repo=str(path)), source_spec(window), append_dim="time")
        return elapsed()

    def library_append() -> float:
        path = created()
        with stopwatch() as elapsed:
            _library_append(path, window, None)
        return elapsed()

    # the scheduled append: a group that already holds every label up to the scheduled time
    up_to_date = fresh_dir(bench.workdir, "scheduled")
    hourly = {**source_spec(first), "kwargs": {**first.kwargs(), "periods": 10**6}}
    del hourly["kwargs"]["first"]
    until = dt.datetime(2020, 1, 1) + dt.timedelta(hours=first.periods - 1)
    scheduled = on_scheduler(scheduled_append_flow, None)
    scheduled(Target(repo=str(up_to_date)), hourly, scheduled_time=until)

    def scheduled_nothing_new() -> float:
        from prefect.client.orchestration import get_client

        state = scheduled(
            Target(repo=str(up_to_date)), hourly, scheduled_time=until, return_state=True
        )
        result = state.result()
        if not result.skipped:
            raise RuntimeError(f"the scheduled append wrote something: {result}")
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.start_time is not None
        assert run.end_time is not None
        return float((run.end_time - run.start_time).total_seconds())

    daemon = WarmDaemon.start(bench.workdir / "daemon", flow_env)
    paths: dict[str, Callable[[], float]] = {
        CLI_APPEND: cli_append(None),
        CLI_APPEND_DAEMON: cli_append(None, daemon),
        "append_flow, called in this process": flow_append,
        LIBRARY_APPEND: library_append,
        SCHEDULED_NOTHING_NEW: scheduled_nothing_new,
    }
    if bench.before is not None:
        paths[f"icefloe append (CLI) of {bench.before_ref}"] = cli_append(bench.before)
    times = {name: Samples() for name in paths}
    names = list(paths)
    try:
        for rep in range(bench.config.repeats):
            for name in _rotated(names, rep):
                seconds, record = bench.timed(paths[name])
                times[name].add(seconds, record)
                bench.note(name, seconds, record)
    finally:
        daemon.stop()
    if daemon.ran != bench.config.repeats:
        raise RuntimeError(f"the daemon ran {daemon.ran} appends, not {bench.config.repeats}")
    return {
        "bytes": window.nbytes,
        "describe": window.describe(),
        "rows": [{"path": n, "seconds": times[n].as_dict()} for n in names],
    }


CLI_APPEND = "icefloe append (CLI, new process, running server)"
CLI_APPEND_DAEMON = "icefloe append (CLI, new process, running server and icefloe daemon)"


@dataclass
class WarmDaemon:
    """``icefloe daemon`` for the CLI measurement: its log says when a spare is ready."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, home: Path, env: dict[str, str]) -> WarmDaemon:
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "ICEFLOE_DAEMON_SOCKET": str(home / "daemon.sock"),
        }
        log = home / "daemon.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("icefloe")), "daemon"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = cls(env, log, process)
        daemon.wait_for_spare()
        return daemon

    @property
    def ran(self) -> int:
        return self.log.read_text().count(" runs icefloe ")

    def wait_for_spare(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text().count(" ready") <= self.ran:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"icefloe daemon has no spare:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


LIBRARY_APPEND = "icefloe library append + commit (no Prefect)"
SCHEDULED_NOTHING_NEW = "scheduled append with nothing new: flow run time"


# -- 2b. the demo --------------------------------------------------------------------------------


def demo(bench: Bench) -> dict[str, Any]:
    """``icefloe demo`` as the README runs it: a new process, no Prefect API configured (so a
    temporary server), in a fresh directory. The first run starts on a new Prefect home (its
    database created and migrated); the timed runs reuse that home, as a user's second
    run would."""
    days = bench.config.demo_days
    bench.log(f"2b. icefloe demo --days {days}, temporary Prefect server")
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "ICEFLOE_SCHEDULER_ADDRESS", "ICEFLOE_THREADS_BELOW_BYTES")
    }
    base_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )

    def env_for(label: str) -> dict[str, str]:
        home = bench.workdir / f"demo-home-{label}"
        return {
            **base_env,
            "PREFECT_HOME": str(home),
            "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        }

    noisy: dict[str, list[str]] = {}

    def run_demo(tree: Path | None, label: str) -> Callable[[], float]:
        def run() -> float:
            work = fresh_dir(bench.workdir, "demo")
            work.mkdir()
            with stopwatch() as elapsed:
                done = _run_cli(tree, ["demo", "--days", str(days)], env_for(label), work)
            seconds = elapsed()
            noisy[label] = _noisy(done.stdout + done.stderr)
            if not (work / "icefloe-demo").exists():
                raise RuntimeError(f"the demo ({label}) wrote nothing")
            shutil.rmtree(work, ignore_errors=True)
            return seconds

        return run

    first, first_record = bench.timed(run_demo(None, "this"), retries=0)
    bench.note("first run on a new Prefect home", first, first_record)
    paths = {DEMO: run_demo(None, "this")}
    if bench.before is not None:
        paths[f"icefloe demo of {bench.before_ref}"] = run_demo(bench.before, "before")
        first_before, first_before_record = bench.timed(run_demo(bench.before, "before"), retries=0)
        bench.note(
            f"first run of {bench.before_ref} on a new Prefect home",
            first_before,
            first_before_record,
        )
    times = {name: Samples() for name in paths}
    names = list(paths)
    for rep in range(bench.config.repeats):
        for name in _rotated(names, rep):
            seconds, record = bench.timed(paths[name])
            times[name].add(seconds, record)
            bench.note(name, seconds, record)
    return {
        "days": days,
        "first_run": {"seconds": first, "conditions": first_record},
        "first_run_before": (
            {"seconds": first_before, "conditions": first_before_record}
            if bench.before is not None
            else None
        ),
        "rows": [{"path": n, "seconds": times[n].as_dict()} for n in names],
        "noisy_lines": noisy.get("this", []),
        "noisy_lines_before": noisy.get("before"),
    }


DEMO = "icefloe demo (this build)"


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
    others: dict[str, float] = {}
    meter = OtherWork()
    for i in range(cfg.appends):
        if i in (cfg.append_window, cfg.appends - cfg.append_window):
            others["first" if i == cfg.append_window else "between"] = round(meter.cores(), 2)
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
    others["last"] = round(meter.cores(), 2)
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
        "others_cores": others,
    }


# -- 4 and 6. memory and size scaling ------------------------------------------------------------


def scaling(bench: Bench, bulk: dict[str, Any] | None = None) -> dict[str, Any]:
    """create_flow at several sizes; the bulk size is taken from measurement 1 when it ran."""
    cfg = bench.config
    points: dict[int, dict[str, Any]] = {}

    def point(shape_bytes: int, periods: int) -> dict[str, Any]:
        return points.setdefault(
            shape_bytes,
            {
                "bytes": shape_bytes,
                "periods": periods,
                "seconds": Samples(),
                "peak": Samples(unit="B"),
                "baseline": Samples(unit="B"),
            },
        )

    bench.log("4/6. create_flow at several sizes: time and peak RSS of all processes")
    sizes = list(cfg.scaling)
    flow_row = None
    if bulk is not None and not bulk.get("skipped"):
        flow_row = next(r for r in bulk["rows"] if r["path"] == FLOW)
    else:
        sizes.append(cfg.bulk)
    # every size in every repeat, in rotating order, so that the machine's load drifting
    # during the run spreads over all sizes; the largest runs once, in the middle repeat
    for rep in range(cfg.scaling_repeats):
        todo = _rotated(sizes, rep)
        if rep == cfg.scaling_repeats // 2:
            todo += list(cfg.memory_only)
        for shape in todo:
            done = _timed_write(bench, write_create_flow, shape)
            p = point(shape.nbytes, shape.periods)
            p["seconds"].add(done.seconds, done.conditions)
            p["peak"].add(done.rss.peak)
            p["baseline"].add(done.rss.baseline)
            bench.note(
                f"{shape.nbytes / 1e9:.2f} GB",
                done.seconds,
                done.conditions,
                f", peak {done.rss.peak / 1e9:.2f} GB",
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
                "peak_rss": p["peak"].as_dict(),
                "baseline_rss": p["baseline"].as_dict(),
            }
        )
    if flow_row is not None:
        rows.append(
            {
                "bytes": bulk["bytes"],  # type: ignore[index]
                "periods": bulk["shape"]["periods"],  # type: ignore[index]
                "repeats": len(flow_row["seconds"]["values"]),
                "seconds": flow_row["seconds"],
                "peak_rss": flow_row["peak_rss"],
                "baseline_rss": {"median": float("nan"), "values": []},
                "from_bulk": True,
            }
        )
        rows.sort(key=lambda r: r["bytes"])
    for row in rows:
        row["s_per_gb"] = row["seconds"]["median"] / (row["bytes"] / 1e9)
        row["mb_per_s"] = row["bytes"] / 1e6 / row["seconds"]["median"]
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

    def full_run() -> float:
        path = fresh_dir(bench.workdir, "resume-full")
        with stopwatch() as elapsed:
            write_create_flow(bench, shape, path, {**options, "run_key": uuid.uuid4().hex})
        shutil.rmtree(path, ignore_errors=True)
        return elapsed()

    for _ in range(cfg.resume_repeats):
        full.add(*bench.timed(full_run))

        path = fresh_dir(bench.workdir, "resume-killed")
        key = uuid.uuid4().hex
        bench.conditions.wait_for_quiet()
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

        def rerun_once(path: Path = path, key: str = key) -> None:
            write_create_flow(bench, shape, path, {**options, "run_key": key})

        tasks.batches.write_batch = counting
        try:
            # not repeated when busy: a second re-run would find everything persisted
            rerun.add(*bench.timed(rerun_once, retries=0))
        finally:
            tasks.batches.write_batch = original
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
        for rep in range(cfg.backfill_repeats):
            for name in _rotated(names, rep):

                def run(name: str = name) -> float:
                    path = fresh_dir(bench.workdir, "backfill")
                    with stopwatch() as elapsed:
                        paths[name](path)
                    if not _same_data(path, shape):
                        raise AssertionError(f"{name} did not store the source's data")
                    shutil.rmtree(path, ignore_errors=True)
                    return elapsed()

                seconds, record = bench.timed(run)
                times[name].add(seconds, record)
                bench.note(name, seconds, record)
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
