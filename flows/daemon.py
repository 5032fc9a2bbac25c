"""``icefloe daemon``: keep an imported icefloe ready, so that a command starts at once.

A command spends 2.5–3.5 s importing Prefect, xarray, zarr, dask and icechunk before it does
anything, most of a 1 MB append's time. ``icefloe daemon`` (run it in the foreground, under
systemd, tmux or a container's supervisor) keeps one *spare* process that has imported
everything and waits on a Unix socket. The ``icefloe`` command looks for that socket first
(``flows.launch``, standard library only, so this costs milliseconds) and, if a compatible
spare answers, hands it the command: its arguments, working directory, environment and its
own stdin, stdout and stderr (passed as file descriptors, so the progress bar and colours
are those of the user's terminal). The spare runs the command exactly as the command would
have run itself, sends back the exit status and exits; the daemon starts the next spare at
once. Nothing else changes: the run is the same Prefect flow run, with the same lifeline.

Why one spare per command instead of one long-lived server running commands in threads:
each command gets a process of its own, as it would without the daemon. A command that
crashes, leaks, changes global state (logging, environment) or is killed takes nothing else
with it, and killing a command still kills exactly one process. Forking a warm parent would
be quicker still, but is unsafe: importing icechunk starts its Tokio runtime's threads, which
a forked child would not have.

When the daemon is not used (the command runs in its own process, as before):
- no socket at ``ICEFLOE_DAEMON_SOCKET`` (default ``~/.icefloe/daemon.sock``), nobody
  listening, or ``ICEFLOE_DAEMON=0``;
- the command would need a temporary Prefect server (no API configured): a daemon is for
  a running server;
- the spare was started for other code (icefloe or a dependency changed since: the spare
  then exits and the daemon starts a fresh one) or another configuration (a different
  ``PREFECT_*``, ``DASK_*``, ``ICEFLOE_*`` or ``ICECHUNK_*`` variable, ``HOME`` or
  ``PYTHONPATH``: what a module may read at import);
- no spare took the command within ``ICEFLOE_DAEMON_WAIT`` seconds (default 15; the next
  spare is still importing).

Killing the command (Ctrl-C, SIGTERM, SIGHUP) passes the signal to the spare running it; if
the command's process dies without a word (SIGKILL), the spare sees its socket close and
stops itself with SIGTERM, as if it had been killed itself: the target branch is left as
it was, as for any killed run.

This module imports only the standard library: the ``icefloe`` command imports it before
anything else, and the daemon's supervising process never imports more.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["serve", "socket_path", "submit"]

SOCKET_ENV = "ICEFLOE_DAEMON_SOCKET"
ENABLED_ENV = "ICEFLOE_DAEMON"
WAIT_ENV = "ICEFLOE_DAEMON_WAIT"
DEFAULT_WAIT_SECONDS = 15.0

# Variables a module may read when it is imported: a spare imported everything under the
# daemon's values, so it runs only commands whose values are the same.
_IMPORT_TIME_PREFIXES = ("PREFECT_", "DASK_", "ICEFLOE_", "ICECHUNK_")
_IMPORT_TIME_NAMES = ("HOME", "PYTHONPATH")
# ... except the daemon's own settings, which only the command's launcher reads.
_NOT_IMPORT_TIME = (SOCKET_ENV, ENABLED_ENV, WAIT_ENV)

# Spare → daemon, one line each on the spare's stdout.
_READY, _TAKEN, _STALE = "ready", "taken", "stale"
_RESTART_PAUSE_SECONDS = 5.0


def socket_path() -> Path:
    """Where the daemon listens and commands look for it."""
    configured = os.environ.get(SOCKET_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".icefloe" / "daemon.sock"


def code_fingerprint() -> str:
    """Changes whenever icefloe's source or the installed packages change.

    icefloe's modules by modification time (an editable install sees every edit); the
    environment's site-packages directory by its own modification time, which every install,
    upgrade and removal changes.
    """
    root = Path(__file__).resolve().parent.parent
    parts = [sys.executable, str(root)]
    for package in ("flows", "tasks", "deployments"):
        for path in sorted((root / package).rglob("*.py")):
            parts.append(f"{path.relative_to(root)} {path.stat().st_mtime_ns}")
    with contextlib.suppress(OSError):
        parts.append(str(os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _import_time_environment(env: dict[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if (name.startswith(_IMPORT_TIME_PREFIXES) or name in _IMPORT_TIME_NAMES)
        and name not in _NOT_IMPORT_TIME
    }


# -- the command's side ----------------------------------------------------------------------


def submit(argv: list[str]) -> int | None:
    """Run ``icefloe ARGV`` in the daemon's spare; its exit status, or None if no daemon
    took it (then the caller runs the command itself: nothing has run)."""
    if os.environ.get(ENABLED_ENV, "1").lower() in ("0", "false", "no", "off"):
        return None
    path = socket_path()
    if not path.exists():
        return None
    wait = float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_SECONDS)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(wait)
        conn.connect(str(path))
        header = {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "code": code_fingerprint(),
        }
        socket.send_fds(conn, [json.dumps(header).encode() + b"\n"], [0, 1, 2])
        lines = _lines(conn)
        reply = json.loads(next(lines))
        if "pid" not in reply:
            return None  # refused: another configuration or other code
        # The spare waits for this word: a command that gave up waiting (and runs itself)
        # never sends it, so a command never runs twice.
        conn.sendall(b"go\n")
    except (OSError, StopIteration, ValueError):
        conn.close()
        return None
    conn.settimeout(None)
    with _forwarding_signals(int(reply["pid"])) as forwarded:
        try:
            for line in lines:
                status = json.loads(line)
                if "exit" in status:
                    return int(status["exit"])
        except OSError:
            pass
    if forwarded:
        return 128 + forwarded[-1]
    print("icefloe: the daemon's process for this command ended without a status", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _forwarding_signals(pid: int) -> Iterator[list[int]]:
    """Ctrl-C, SIGTERM and SIGHUP of the command go to the spare that runs it."""
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in signums}
    try:
        yield forwarded
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _lines(conn: socket.socket) -> Iterator[str]:
    buffered = b""
    while True:
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            yield line.decode()
        data = conn.recv(65536)
        if not data:
            return
        buffered += data


# -- the daemon ------------------------------------------------------------------------------


def serve(path: Path | None = None) -> int:
    """``icefloe daemon``: listen at ``path`` and keep one spare ready until stopped."""
    path = path or socket_path()
    listener = _listen(path)
    print(
        f"icefloe daemon: listening on {path}; icefloe commands that find it run in a warm "
        "process (Ctrl-C to stop)",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    spare: subprocess.Popen[str] | None = None
    running: list[subprocess.Popen[str]] = []
    try:
        while True:
            spare = _start_spare(listener)
            assert spare.stdout is not None
            if spare.stdout.readline().strip() != _READY:
                spare.stdout.close()
                spare.wait()
                print(
                    f"icefloe daemon: the spare process exited with status {spare.returncode} "
                    f"before it was ready (its error is above); trying again in "
                    f"{_RESTART_PAUSE_SECONDS:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(_RESTART_PAUSE_SECONDS)
                continue
            print(f"icefloe daemon: process {spare.pid} ready", flush=True)
            said = spare.stdout.readline().split(maxsplit=1)
            spare.stdout.close()  # all it says; a daemon that runs for months keeps no pipes
            if said and said[0] == _TAKEN:
                print(
                    f"icefloe daemon: process {spare.pid} runs icefloe {said[1].strip()}",
                    flush=True,
                )
                running.append(spare)
            elif said and said[0] == _STALE:
                print("icefloe daemon: icefloe changed; starting a new spare", flush=True)
                spare.wait()
            running = [process for process in running if process.poll() is None]
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        # Commands still running belong to their callers and finish; the idle spare goes.
        if spare is not None and spare not in running and spare.poll() is None:
            spare.terminate()
            spare.wait()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that was killed
            else:
                raise SystemExit(f"icefloe daemon: another daemon is listening on {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Commands pass their environment, credentials included: only this user may connect.
    previous = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(previous)
    listener.listen(16)
    return listener


def _start_spare(listener: socket.socket) -> subprocess.Popen[str]:
    fd = listener.fileno()
    return subprocess.Popen(
        [sys.executable, "-m", "flows.daemon", "--spare", str(fd)],
        pass_fds=[fd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        # Ctrl-C in the daemon's terminal must not reach the commands its spares run.
        start_new_session=True,
    )


# -- the spare -------------------------------------------------------------------------------


def _spare(listen_fd: int) -> None:
    """Import everything, take one command, run it as ``icefloe`` would, exit."""
    code = code_fingerprint()
    own = _import_time_environment(dict(os.environ))
    import flows.cli  # noqa: F401  (the warm part: Prefect, xarray, zarr, dask, icechunk)
    import tasks.cluster  # noqa: F401  (distributed and prefect-dask)
    from flows.lifeline import start_watchdog

    start_watchdog()  # the run's watchdog, started ahead like the imports
    _warm_up()

    listener = socket.socket(fileno=listen_fd)
    _tell(_READY)
    while True:
        conn, _ = listener.accept()
        taken = _take(conn, code, own)
        if taken is not None:
            break
    listener.close()
    header, fds = taken
    _tell(f"{_TAKEN} {' '.join(header['argv'][:1]) or '(no command)'}")
    _run(conn, header, fds)


def _warm_up() -> None:
    """Do now what a command's first flow run would otherwise do on its way (0.8 s of a
    1 MB append's 1.4 s, measured; then 0.5 s of the 0.9 s left): the modules Prefect and
    xarray import on first use, zarr's and icechunk's first write (into memory: nothing is
    stored), the API version check Prefect makes once per process, and the events
    connection. A warm-up that fails costs the command that time, nothing else."""
    try:
        import fastapi.encoders  # noqa: F401  (Prefect encodes a run's parameters with it)
        import icechunk
        import numpy as np
        import pandas as pd
        import prefect.utilities.visualization  # noqa: F401  (imported by Flow.__call__)
        import xarray as xr
        from prefect.client.orchestration import get_client
        from prefect.events.worker import EventsWorker
        from prefect.settings import get_current_settings

        labels = pd.date_range("2000-01-01", periods=2, freq="h")
        tiny = xr.Dataset({"v": ("time", np.zeros(2, "float32"))}, coords={"time": labels})
        repo = icechunk.Repository.create(icechunk.in_memory_storage())
        store = repo.writable_session("main").store
        tiny.chunk().to_zarr(store, mode="w", consolidated=False)  # through dask's threads
        if get_current_settings().api.url:
            with get_client(sync_client=True) as client:
                # a process asks the server's version once, on its first flow run; the
                # server's first answer can take half a second
                client.raise_for_api_version_mismatch_once()
            # the events websocket a run's first event would open
            EventsWorker.instance()
    except Exception as err:
        print(f"icefloe daemon: the spare's warm-up failed ({err!r})", file=sys.stderr)


def _tell(word: str) -> None:
    print(word, flush=True)


def _take(
    conn: socket.socket, code: str, own: dict[str, str]
) -> tuple[dict[str, Any], list[int]] | None:
    """The command's header and descriptors if this spare runs it, else None (refused, or
    the command gave up waiting). A spare whose code is stale exits after refusing."""
    fds: list[int] = []
    try:
        conn.settimeout(10)
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                raise ConnectionError("the command went away")
            data += more
        header = json.loads(data)
        differs = sorted(
            name
            for name in own.keys() | _import_time_environment(header["env"]).keys()
            if own.get(name) != header["env"].get(name)
        )
        if header["code"] != code:
            conn.sendall(json.dumps({"refused": "other code"}).encode() + b"\n")
            _tell(_STALE)
            os._exit(0)
        if differs or len(fds) != 3:
            refusal = f"other settings: {', '.join(differs)}" if differs else "no terminal"
            conn.sendall(json.dumps({"refused": refusal}).encode() + b"\n")
            raise ConnectionError(refusal)
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        if conn.recv(16) != b"go\n":
            raise ConnectionError("the command gave up waiting")
        conn.settimeout(None)
        return header, fds
    except (OSError, ValueError, KeyError):
        for fd in fds:
            os.close(fd)
        conn.close()
        return None


def _run(conn: socket.socket, header: dict[str, Any], fds: list[int]) -> None:
    daemon_stderr = os.dup(2)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # The signals the command passes on act as they would in the command's own process,
    # even where the daemon was started with them ignored (``icefloe daemon &`` in a script
    # starts it with SIGINT ignored, and that is inherited).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    os.chdir(header["cwd"])
    os.environ.clear()
    os.environ.update(header["env"])
    sys.argv = ["icefloe", *header["argv"]]
    finished = threading.Event()

    def watch() -> None:
        # EOF: the command's process died without passing on a signal (SIGKILL). Stop as a
        # killed command stops; the lifeline then ends this process's cluster.
        with contextlib.suppress(OSError):
            conn.recv(1)
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="icefloe-daemon-caller", daemon=True).start()
    _bind_to_terminal()

    from flows.launch import exit_status, run_app

    status = exit_status(run_app())
    # The command is done once its output is: give the terminal back and answer now.
    # Prefect's exit hooks then send the last logs and events to the API from here (a
    # quarter of a second), with anything they print going to the daemon's log; the
    # caller, which may be reading the command's pipes to their end, need not wait.
    _release_terminal(daemon_stderr)
    finished.set()
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": status}).encode() + b"\n")
    conn.close()
    atexit._run_exitfuncs()
    os._exit(status)


def _release_terminal(daemon_stderr: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(daemon_stderr, 1)
    os.dup2(daemon_stderr, 2)
    os.close(null)
    os.close(daemon_stderr)


def _bind_to_terminal() -> None:
    """Console output as the command's own process would make it: Prefect's log handler and
    the CLI's consoles decide on colour and width from the streams they were created with,
    which were the daemon's."""
    from prefect.logging.configuration import setup_logging

    import flows.cli

    setup_logging(incremental=False)
    flows.cli.rebind_consoles()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spare"]:
        _spare(int(sys.argv[2]))
    else:
        sys.exit(serve())
