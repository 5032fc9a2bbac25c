"""Scale: millions of chunks, thousands of windows, many writers (issue #17).

    python -m benchmarks.scale [--sizes small|full] [--only SECTION,...] [--workdir DIR]

Starts ``prefect server start`` on a new database and an external dask cluster made of
``dask scheduler`` and ``dask worker`` processes (2 workers × 1 thread, no nanny, so each
worker's memory is its own process's), runs the sections, and writes their raw numbers to
``scale_results.json``, plots to ``scale_*.png`` and the "Scale" section of RESULTS.md
(between its markers; the rest of the file is left as it is).

Sections (each a ratio or a curve, never a timed assertion):

- ``growth``: commit latency of an append into an archive of 1M+ chunks ÷ into a young
  archive, with manifests split along time (the default) and without;
- ``bigrun``: one run writing 10k, 100k and 1M tiny chunks: peak RSS of the flow process
  and of each worker, and commit time, against the number of chunks;
- ``planning``: backfills of many windows: planning time, orchestration per window, and
  how the windows spread over the workers;
- ``contention``: a backfill of 64 windows with 16 in flight and 16 concurrent region
  runs, on the S3 test server and the local filesystem;
- ``gc``: maintenance_flow on the 1M-chunk archive with a few hundred expired snapshots.

``--sizes small`` runs every section at sizes that take a few minutes in all; ``full`` at
the issue's (1M chunks, 10,000 windows), for a background run under ``nice``. The load
average is recorded before and after each section: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.infra import (
    ROOT,
    drain_prefect,
    fresh_dir,
    machine,
    prefect_server,
    prefect_settings,
    versions,
)

SECTIONS = ("planning", "contention", "bigrun", "growth", "gc")
Log = Callable[[str], None]


# -- the external cluster ------------------------------------------------------------------------


@dataclass
class ExternalCluster:
    """``dask scheduler`` and ``dask worker`` processes started (and stopped) by the benchmark."""

    address: str
    scheduler_pid: int
    worker_pids: list[int]


def _cluster_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        # the workers' own logs would drown the benchmark's
        "DASK_LOGGING__DISTRIBUTED": "warning",
    }


@contextlib.contextmanager
def external_cluster(workdir: Path, workers: int = 2) -> Iterator[ExternalCluster]:
    """A scheduler and ``workers`` single-threaded workers without nannies, as processes."""
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / f"scheduler-{os.getpid()}.json"
    scheduler_file.unlink(missing_ok=True)
    env = _cluster_env()
    procs: list[subprocess.Popen[bytes]] = []
    log = (workdir / "cluster.log").open("ab")

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        procs.append(proc)
        return proc

    try:
        scheduler = start(
            "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
            "--dashboard-address", ":0",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline or scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler did not start: see {workdir / 'cluster.log'}")
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        pids = []
        for _ in range(workers):
            worker = start(
                "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                "--memory-limit", "0",
            )  # fmt: skip
            pids.append(worker.pid)
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield ExternalCluster(address, scheduler.pid, pids)
    finally:
        for proc in reversed(procs):  # workers first, then the scheduler
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


# -- memory, per process -------------------------------------------------------------------------


class PeakRss:
    """Peak RSS of each of ``pids`` (and of their children), sampled every ``interval`` s."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peaks: dict[str, int] = dict.fromkeys(pids, 0)
        self.series: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._started = 0.0

    def _sample(self) -> dict[str, int]:
        now: dict[str, int] = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                now[name] = psutil.Process(pid).memory_info().rss
        for name, rss in now.items():
            self.peaks[name] = max(self.peaks[name], rss)
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.series.append((time.time(), self._sample()))  # UNIX time: Prefect's clock
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._started = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# -- flow runs in processes of their own ---------------------------------------------------------


class FlowProcess:
    """A flow run in its own process (benchmarks/scale_runner.py), started and imported
    ahead, run on ``go()``; ``wait()`` returns its JSON report."""

    def __init__(self, api_url: str, logs: Path, flow: str, **kwargs: Any) -> None:
        from benchmarks.infra import subprocess_env

        spec = json.dumps({"flow": flow, "kwargs": kwargs}, default=str)
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self._stderr = logs.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale_runner", spec],
            env=subprocess_env(api_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"flow process for {flow} did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 7200) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=timeout)
        self._stderr.close()
        if not line:
            raise RuntimeError(f"flow process {self.proc.pid} exited with {self.proc.returncode}")
        report: dict[str, Any] = json.loads(line)
        return report

    def count(self, pattern: str) -> int:
        """Lines of the run's log (stderr) holding ``pattern``."""
        return sum(pattern in line for line in self.logs.read_text().splitlines())


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Bench:
    sizes: str
    workdir: Path
    api_url: str
    cluster: ExternalCluster
    log: Log
    notes: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def flow_process(self, name: str, flow: str, **kwargs: Any) -> FlowProcess:
        return FlowProcess(self.api_url, self.workdir / "logs" / f"{name}.log", flow, **kwargs)

    def service_cpu(self) -> float:
        """CPU seconds used so far by the services every run shares: the dask scheduler and
        workers, and the Prefect API server (and its uvicorn)."""
        from benchmarks.infra import _is_prefect_server

        pids = {self.cluster.scheduler_pid, *self.cluster.worker_pids}
        for child in psutil.Process().children(recursive=True):
            if _is_prefect_server(child):
                pids.add(child.pid)
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total

    def processes(self) -> dict[str, int]:
        """The flow process (this one) and each worker, by name."""
        named = {"flow process": os.getpid()}
        named.update({f"worker {i + 1}": pid for i, pid in enumerate(self.cluster.worker_pids)})
        return named


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--sizes", choices=("small", "full"), default="small")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--workdir", type=Path, help="where repositories go (default: a temp dir)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "scale_results.json",
        help="the raw numbers; plots and RESULTS.md's Scale section go beside it",
    )
    parser.add_argument("--no-report", action="store_true", help="write only the JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from benchmarks import scale_report, scale_sections

    args = _parser().parse_args(argv)
    # stopped with SIGTERM (kill PID), still stop the cluster and server it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = args.only.split(",") if args.only else list(SECTIONS)
    if unknown := set(only) - set(SECTIONS):
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:8.1f} s] {message}", flush=True)

    previous: dict[str, Any] = {}
    if args.out.exists():
        # sections not run this time keep their last results
        previous = json.loads(args.out.read_text())
    results: dict[str, Any] = {
        **previous,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
    }
    results.setdefault("sections", {})
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="icefloe-scale-"))
            )
        # the S3 test server takes any credentials; flows and workers find these
        from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

        os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        api_url = stack.enter_context(prefect_server(workdir / "prefect"))
        # in the environment too: threads that do not carry the settings context (dask's,
        # icechunk callbacks) would otherwise start a temporary server of their own
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(workdir / "prefect-results")
        stack.enter_context(prefect_settings(api_url, workdir / "prefect-results"))
        stack.callback(drain_prefect)
        cluster = stack.enter_context(external_cluster(workdir / "cluster"))
        log(
            f"Prefect API {api_url}; dask scheduler {cluster.address}, workers {cluster.worker_pids}"
        )
        bench = Bench(args.sizes, workdir, api_url, cluster, log)
        for name in only:
            section = getattr(scale_sections, name)
            before = load()
            begun = time.perf_counter()
            try:
                outcome = section(bench)
            except Exception as err:  # keep the other sections of a long run
                traceback.print_exc()
                outcome = {"failed": f"{type(err).__name__}: {err}"}
            outcome.update(
                sizes=args.sizes,
                seconds=time.perf_counter() - begun,
                load_before=before,
                load_after=load(),
                date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            )
            results["sections"][name] = outcome
            log(f"{name}: {outcome['seconds']:.1f} s (load {before} → {outcome['load_after']})")
            args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if not args.no_report:
        scale_report.write(results, args.out.parent)
    log(f"wrote {args.out}")
    return 0


def fresh(bench: Bench, name: str) -> Path:
    return fresh_dir(bench.workdir / "repos", name)


if __name__ == "__main__":
    sys.exit(main())
