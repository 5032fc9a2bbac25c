"""What every measurement shares: the Prefect server, the cluster, timing, memory, the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]

# -- timing -------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated measurements of one quantity (seconds unless ``unit`` says otherwise), each
    with the machine's conditions while it ran (``Conditions.as_dict``) when measured so."""

    values: list[float] = field(default_factory=list)
    unit: str = "s"
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def add(self, value: float, conditions: dict[str, Any] | None = None) -> None:
        self.values.append(value)
        if conditions is not None:
            self.conditions.append(conditions)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 2:
            return (self.median, self.median)
        q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return (q1, q3)

    @property
    def busy(self) -> int:
        """How many of the values were measured while other work loaded the machine."""
        return sum(1 for c in self.conditions if c.get("busy"))

    def as_dict(self) -> dict[str, Any]:
        q1, q3 = self.quartiles
        quiet = [v for v, c in zip(self.values, self.conditions, strict=False) if not c["busy"]]
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": q1,
            "q3": q3,
            "values": self.values,
            "conditions": self.conditions,
            "busy": self.busy,
            "quiet_median": statistics.median(quiet) if quiet else None,
        }


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...; elapsed()`` — seconds, frozen when the block ends."""
    started = time.perf_counter()
    ended: list[float] = []
    yield lambda: (ended[0] if ended else time.perf_counter()) - started
    ended.append(time.perf_counter())


def fresh_dir(parent: Path, name: str) -> Path:
    """A path that no earlier run used: a flow's default run key digests the target's path,
    and icechunk gives every new repository the same first snapshot id, so a re-created
    repository at a reused path would "resume" the persisted forks of the deleted one."""
    path = parent / f"{name}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- memory -------------------------------------------------------------------------------------


def _is_prefect_server(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "prefect.server" in cmdline or "uvicorn" in cmdline or "prefect server" in cmdline


def write_processes(extra_pids: set[int] | None = None) -> list[psutil.Process]:
    """This process, its descendants but the Prefect API server, and ``extra_pids``.

    With a LocalCluster started here that is the flow process (which also runs the dask
    scheduler), the nannies and the workers.
    """
    me = psutil.Process()
    procs = {me.pid: me}
    for child in me.children(recursive=True):
        procs[child.pid] = child
    for pid in extra_pids or set():
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.setdefault(pid, psutil.Process(pid))
    excluded: set[int] = set()
    for proc in procs.values():
        if proc.pid != me.pid and _is_prefect_server(proc):
            excluded.add(proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                excluded.update(c.pid for c in proc.children(recursive=True))
    return [p for pid, p in procs.items() if pid not in excluded]


class RssSampler:
    """Peak of the summed RSS of ``write_processes()``, sampled every ``interval`` seconds.

    The process list is refreshed on every sample, so processes started meanwhile count.
    """

    def __init__(self, interval: float = 0.1, extra_pids: set[int] | None = None) -> None:
        self.interval = interval
        self.extra_pids = extra_pids
        self.peak = 0
        self.baseline = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _total(self) -> int:
        total = 0
        for proc in write_processes(self.extra_pids):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


# -- the Prefect API ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float = 180.0) -> Iterator[str]:
    """``prefect server start`` on a new SQLite database in ``home``; yields the API URL.

    Started in its own process group and stopped by that group's id, so the uvicorn
    process it starts goes with it.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: see {home / 'server.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {timeout} s")
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def prefect_settings(api_url: str, results: Path) -> Iterator[None]:
    """Point this process (flows run in it) at ``api_url``; results persist under ``results``.

    Set in the environment and in Prefect's process-wide settings, not only in this
    thread's context: a thread started without a copy of it (Prefect's own workers, a
    library's) would otherwise find no API and start a temporary server of its own.
    """
    from prefect.context import refresh_global_settings_context

    results.mkdir(parents=True, exist_ok=True)
    updates = {
        "PREFECT_API_URL": api_url,
        "PREFECT_LOCAL_STORAGE_PATH": str(results),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    refresh_global_settings_context()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        refresh_global_settings_context()


def drain_prefect() -> None:
    """Send the logs and events still queued in this process (before the API goes away)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # never started
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def subprocess_env(api_url: str) -> dict[str, str]:
    """The environment of a flow run in a process of its own: this one's Prefect API."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }


# -- the machine's other work --------------------------------------------------------------------


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent on anything but idling, since boot
    (``steal``, time the hypervisor gave to other machines, counts as busy)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and everything it started: the live ones, and those that
    ended and were waited for (with their own waited-for descendants)."""
    mine = os.times()
    total = mine.user + mine.system + mine.children_user + mine.children_system
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = child.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class OtherWork:
    """The cores that processes outside this benchmark kept busy, between two readings.

    The load average cannot tell: it counts the benchmark's own processes, and the 1-minute
    figure still remembers a write that ended a minute ago. This subtracts the CPU time of
    the benchmark's process tree from the machine's, which leaves other users' work.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._machine = _machine_busy_seconds()
        self._own = _own_seconds()

    def cores(self) -> float:
        """Cores used by other work since this reading (or the last ``cores`` call)."""
        wall, machine, own = time.monotonic(), _machine_busy_seconds(), _own_seconds()
        elapsed = max(wall - self._wall, 1e-6)
        used = max(0.0, (machine - self._machine) - (own - self._own)) / elapsed
        self._wall, self._machine, self._own = wall, machine, own
        return used


@dataclass
class Conditions:
    """When a measurement counts as quiet, how long to wait for quiet, and how often to retry.

    A measurement is *busy* when other work used more than ``busy_per_core`` of every core,
    on average, in the second before it started or while it ran; it is then repeated (up to
    ``retries`` times, within an overall ``retry_budget`` of seconds) and, if every try was
    busy, the least disturbed try is kept and flagged. Before each try the benchmark waits up
    to ``max_wait`` seconds for a quiet second, within an overall ``wait_budget``; the load
    average (1, 5, 15 min) is recorded before and after, for the reader.
    """

    busy_per_core: float = 0.25
    max_wait: float = 30.0
    wait_budget: float = 120.0
    retries: int = 1
    retry_budget: float = 90.0
    waited: float = 0.0
    retried: float = 0.0
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def threshold(self) -> float:
        return self.busy_per_core * self.cores

    def wait_for_quiet(self) -> tuple[float, float]:
        """Wait (bounded) for a second in which other work stayed under the threshold;
        returns (seconds waited, cores used by other work in the last second)."""
        began = time.monotonic()
        limit = min(self.max_wait, max(0.0, self.wait_budget - self.waited))
        meter = OtherWork()
        time.sleep(1.0)
        others = meter.cores()
        while others > self.threshold and time.monotonic() - began < limit:
            time.sleep(1.0)
            others = meter.cores()
        waited = time.monotonic() - began
        self.waited += max(0.0, waited - 1.0)
        return waited, others

    def measure(
        self, run: Callable[[], float | None], retries: int | None = None
    ) -> tuple[float, dict[str, Any]]:
        """``run`` timed (or, if it returns a number, that number), with its conditions;
        repeated while busy, up to ``retries`` times (default: the configured number; 0 for a
        run that cannot be repeated on its own)."""
        tries: list[tuple[float, dict[str, Any]]] = []
        for _ in range(1 + (self.retries if retries is None else retries)):
            waited, before = self.wait_for_quiet()
            load_before = os.getloadavg()
            meter = OtherWork()
            with stopwatch() as elapsed:
                reported = run()
            during = meter.cores()
            value = elapsed() if reported is None else float(reported)
            record = {
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "others_before": round(before, 2),
                "others_during": round(during, 2),
                "waited": round(waited, 1),
                "busy": max(before, during) > self.threshold,
                "tries": len(tries) + 1,
            }
            tries.append((value, record))
            if not record["busy"] or self.retried + value > self.retry_budget:
                break
            self.retried += value
        return min(tries, key=lambda t: max(t[1]["others_before"], t[1]["others_during"]))


# -- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 1e9,
        "cpu": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)",
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "icechunk",
        "zarr",
        "xarray",
        "dask",
        "distributed",
        "prefect",
        "prefect-dask",
        "numpy",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
