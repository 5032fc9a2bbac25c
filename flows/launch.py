"""The ``icefloe`` command's entry point: start what a command will wait for, then run it.

A command that runs a flow without a Prefect API configured (no ``PREFECT_API_URL``, as in
``icefloe demo`` on a fresh machine) needs a temporary Prefect server. Prefect would start
one at the flow's first API call, after the command had imported everything, importing
the server's own modules into the command's process first: seconds spent one after the
other. Here the server process starts before anything heavy is imported, so that it boots
on one core while the command imports and prepares on the other, and the command's process
never imports the server at all.

The server is the one Prefect starts (``prefect.server.api.server.SubprocessASGIServer``:
the same uvicorn command and settings, UI off, usage telemetry off unless
``PREFECT_SERVER_ANALYTICS_ENABLED`` says otherwise), stopped when the command exits, and
ended by the run's lifeline watchdog (``flows.lifeline``) if the command is killed. This
module imports only the standard library until the command itself is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

__all__ = ["exit_status", "finish", "main", "run_app", "wait_for_temporary_api"]

# The commands that run a flow in this process.
_FLOW_COMMANDS = {"create", "modify", "append", "region", "backfill", "demo"}
_HEALTH_TIMEOUT_SECONDS = 120.0

_server: subprocess.Popen[bytes] | None = None
_api_url: str | None = None


def main() -> None:
    """``icefloe ...``: in the daemon's warm process if one takes it (``flows.daemon``),
    else the typer application of ``flows.cli`` here, after an early server start."""
    argv = sys.argv[1:]
    if argv[:1] == ["daemon"] and not {"--help", "-h"} & set(argv):
        from flows.daemon import serve

        _exit_now(serve())
    if _runs_a_flow(argv) and _no_api_configured():
        _start_temporary_api()  # a daemon's spare is for a running server
    else:
        from flows.daemon import submit

        status = submit(argv)
        if status is not None:
            _exit_now(status)
    _exit_now(run_app())


def run_app() -> int | str | None:
    """Run ``flows.cli``'s typer application on ``sys.argv``; the code it exits with."""
    from flows.cli import app

    try:
        app()
    except SystemExit as done:
        return done.code
    return 0


def finish(code: int | str | None) -> int:
    """Run the exit hooks and flush; the exit status ``code`` stands for.

    The hooks flush what needs flushing (Prefect's logs and events, logging's handlers, the
    temporary server's stop).
    """
    atexit._run_exitfuncs()
    return exit_status(code)


def exit_status(code: int | str | None) -> int:
    """The status ``sys.exit(code)`` stands for, its message printed; streams flushed."""
    if isinstance(code, str):  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code or 0


def _exit_now(code: int | str | None) -> None:
    """Exit after the exit hooks, without the interpreter's teardown of every module.

    Tearing down numpy, pandas, zarr, icechunk, dask and Prefect object by object takes
    0.6 s of a command that writes 1 MB in 4 s, and changes nothing a user can see.
    """
    os._exit(finish(code))


def wait_for_temporary_api() -> None:
    """Block until the temporary server started by ``main`` answers (no-op without one)."""
    global _server
    if _server is None or _api_url is None:
        return
    deadline = time.monotonic() + _HEALTH_TIMEOUT_SECONDS
    while not _healthy(_api_url):
        if _server.poll() is not None:
            raise RuntimeError(
                f"the temporary Prefect server exited with code {_server.returncode} before it "
                "answered; set PREFECT_API_URL to a running Prefect server instead"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the temporary Prefect server did not answer within {_HEALTH_TIMEOUT_SECONDS:.0f}"
                " s; set PREFECT_API_URL to a running Prefect server instead"
            )
        time.sleep(0.05)


def _runs_a_flow(argv: list[str]) -> bool:
    words = [a for a in argv if not a.startswith("-")]
    if not words or "--help" in argv or "-h" in argv:
        return False
    return words[0] in _FLOW_COMMANDS


def _no_api_configured() -> bool:
    """No API URL in the environment or the active Prefect profile, and Prefect allowed to
    start a temporary server. Prefect's other settings sources (a prefect.toml, a .env) are
    checked once prefect is imported: a server started in vain is stopped then."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").lower() in ("0", "false"):
        return False
    return not _profile_sets_api_url()


def _profile_sets_api_url() -> bool:
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    settings = profiles.get("profiles", {}).get(active, {})
    return bool(isinstance(settings, dict) and settings.get("PREFECT_API_URL"))


def _start_temporary_api() -> None:
    global _server, _api_url
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        # the temporary server would try to send usage telemetry and log an ERROR wherever
        # there is no network; a user who wants it sets the variable
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get(
            "PREFECT_SERVER_ANALYTICS_ENABLED", "false"
        ),
        # Registering every installed block type (which imports prefect-dask, hence
        # distributed) is a tenth of the server's start; a server that lives for one
        # command serves no block forms. Blocks saved earlier still load.
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": os.environ.get(
            "PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false"
        ),
    }
    env.pop("PREFECT_API_URL", None)
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    assert spec is not None, "prefect is a dependency"
    assert spec.origin is not None, "prefect is a regular package"
    _server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            # as Prefect does: its own installation first, not a module of the current directory
            "--app-dir",
            str(Path(spec.origin).parent.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
    )
    atexit.register(_stop_temporary_api)
    _api_url = f"http://127.0.0.1:{port}/api"
    # Prefect may still find an API URL elsewhere (a prefect.toml, a .env file): ask it.
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        _stop_temporary_api()
        return
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = _api_url
    refresh_global_settings_context()
    print(
        f"Starting a temporary Prefect server on {_api_url} for this command "
        "(set PREFECT_API_URL to use a running one)",
        file=sys.stderr,
    )


def _stop_temporary_api() -> None:
    """Stop the server (atexit: after Prefect, whose exit hooks were registered later and run
    first, has sent its queued logs and events)."""
    global _server, _api_url
    server, _server, _api_url = _server, None, None
    if server is None:
        return
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"{api_url}/health", timeout=2) as response,
    ):
        return bool(response.status == 200)
    return False
