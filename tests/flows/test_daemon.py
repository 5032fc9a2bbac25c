"""``icefloe daemon``: commands run in its warm process, exactly as they would alone.

Each test starts the installed ``icefloe daemon`` and runs the installed ``icefloe`` command
against the session's Prefect API, as a user's shell would; what the repository holds is
read back with icechunk and xarray, not through icefloe.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import icechunk
import psutil
import pytest
import xarray as xr

from tests.conftest import plain_xarray, read_back, tip, wait_until
from tests.flows.python_sources import GRID, synthetic

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROGRAM = Path(sys.executable).with_name("icefloe")


def source_json(start: str, periods: int) -> str:
    return json.dumps({"kind": "synthetic", "start": start, "periods": periods, **GRID})


def repository(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


@dataclass
class Daemon:
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    def said(self) -> str:
        return self.log.read_text()

    def ran(self) -> list[tuple[int, str]]:
        """(process id, command) of each command a spare took."""
        found = re.findall(r"process (\d+) runs icefloe (\S+)", self.said())
        return [(int(pid), command) for pid, command in found]


@pytest.fixture(scope="module")
def daemon(prefect_harness: str) -> Iterator[Daemon]:
    # a Unix socket's path must stay under 108 bytes: not under pytest's deep tmp_path
    home = Path(tempfile.mkdtemp(prefix="icefloe-daemon-"))
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "ICEFLOE_DAEMON_SOCKET": str(home / "daemon.sock"),
        # the lazy writes of these small tests run on the command's own threads
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("ICEFLOE_SCHEDULER_ADDRESS", None)
    log = home / "daemon.log"
    with log.open("wb") as out:
        # with SIGINT ignored, as `icefloe daemon &` in a script starts it: the commands it
        # runs must still answer Ctrl-C
        process = subprocess.Popen(
            ["sh", "-c", f'trap "" INT; exec "{PROGRAM}" daemon'],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Daemon(env, log, process)
    try:
        wait_until(lambda: "ready" in running.said(), 120, "the daemon's first spare")
        assert "warm-up failed" not in running.said(), running.said()
        yield running
    finally:
        process.terminate()
        process.wait(30)
        assert not (home / "daemon.sock").exists(), "a stopped daemon removes its socket"


def icefloe(
    daemon: Daemon, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROGRAM), *args],
        env=env or daemon.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_commands_run_in_the_warm_process_with_their_own_terminal(
    daemon: Daemon, tmp_path: Path
) -> None:
    target = str(tmp_path / "repo")

    created = icefloe(
        daemon, "create", "--target", target, "--source", source_json("2020-01-01", 24)
    )
    appended = icefloe(
        daemon, "append", "--target", target, "--source", source_json("2020-01-02", 24)
    )
    missing = icefloe(daemon, "log", "--target", str(tmp_path / "nowhere"))

    assert created.returncode == 0, created.stdout + created.stderr
    assert appended.returncode == 0, appended.stdout + appended.stderr
    # each command's output reached its own stdout and stderr, not the daemon's
    assert "Committed" in appended.stdout
    assert "Beginning flow run" in appended.stderr
    assert "Beginning flow run" not in daemon.said()
    # and its exit status: a refusal is status 1 with its one-line message
    assert missing.returncode == 1
    assert "no Icechunk repository" in missing.stderr
    ran = daemon.ran()[-3:]
    assert [command for _pid, command in ran] == ["create", "append", "log"], daemon.said()
    assert len({pid for pid, _command in ran}) == 3  # a process of its own each
    xr.testing.assert_identical(
        read_back(repository(Path(target))), plain_xarray(synthetic("2020-01-01", 48), tmp_path)
    )


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_command_killed_mid_write_stops_its_run_and_publishes_nothing(
    daemon: Daemon, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGKILL: the caller dies without a word and the spare notices its socket close.
    SIGINT (Ctrl-C): the caller passes it on and exits with the spare's status. Either
    way the spare's run stops and the branch is left as it was."""
    target = tmp_path / "repo"
    created = icefloe(
        daemon, "create", "--target", str(target), "--source", source_json("2020-01-01", 24)
    )
    assert created.returncode == 0, created.stdout + created.stderr
    before = tip(repository(target))
    slow = {
        "kind": "python",
        "function": "tests.flows.durability_sources:slow_synthetic",
        "kwargs": {"delay": 1.0, "start": "2020-01-02", "periods": 48, **GRID},
    }
    command = subprocess.Popen(
        [str(PROGRAM), "append", "--target", str(target), "--source", json.dumps(slow)],
        env=daemon.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert command.stderr is not None
    for line in command.stderr:  # until the lazy write is under way
        if "write_lazy: batch" in line:
            break
    else:
        pytest.fail(f"the append ended before its lazy write: status {command.wait()}")
    spare = daemon.ran()[-1][0]
    assert _alive(spare)

    command.send_signal(signum)
    status = command.wait(60)

    assert status != 0
    wait_until(lambda: not _alive(spare), 60, "the spare to stop")
    assert tip(repository(target)) == before
    xr.testing.assert_identical(
        read_back(repository(target)), plain_xarray(synthetic("2020-01-01", 24), tmp_path)
    )


def test_commands_with_other_settings_or_without_a_daemon_run_in_their_own_process(
    daemon: Daemon, tmp_path: Path
) -> None:
    target = str(tmp_path / "repo")
    ran_before = daemon.ran()
    other = {**daemon.env, "ICEFLOE_LIFELINE": "1"}  # its default, but not the daemon's setting
    created = icefloe(
        daemon, "create", "--target", target, "--source", source_json("2020-01-01", 24), env=other
    )
    unused = {**daemon.env, "ICEFLOE_DAEMON": "0"}
    appended = icefloe(
        daemon, "append", "--target", target, "--source", source_json("2020-01-02", 24), env=unused
    )

    assert created.returncode == 0, created.stdout + created.stderr
    assert appended.returncode == 0, appended.stdout + appended.stderr
    assert daemon.ran() == ran_before, daemon.said()
    xr.testing.assert_identical(
        read_back(repository(Path(target))), plain_xarray(synthetic("2020-01-01", 48), tmp_path)
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
