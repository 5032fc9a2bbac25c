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
    """Repeated measurements of one quantity (seconds unless ``unit`` says otherwise)."""

    values: list[float] = field(default_factory=list)
    unit: str = "s"

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "values": self.values}


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
    """Point this process (flows run in it) at ``api_url``; results persist under ``results``."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    results.mkdir(parents=True, exist_ok=True)
    updates = {
        PREFECT_API_URL: api_url,
        PREFECT_LOCAL_STORAGE_PATH: results,
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    with temporary_settings(updates):
        yield


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
