"""The icefloe command: through typer's runner in this process, and once as a real program."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import icechunk
import pytest
import xarray as xr
from typer.testing import CliRunner

from flows.cli import app
from flows.sources import SyntheticSource
from tests.conftest import plain_xarray, read_back, tip
from tests.flows.python_sources import GRID, synthetic

pytestmark = pytest.mark.usefixtures("prefect_harness")

runner = CliRunner()


def source_json(start: str = "2020-01-01", periods: int = 48) -> str:
    return json.dumps({"kind": "synthetic", "start": start, "periods": periods, **GRID})


def repository(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def test_help_lists_the_commands_of_the_contract() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in (
        "create",
        "modify",
        "append",
        "region",
        "backfill",
        "log",
        "coverage",
        "serve",
        "demo",
    ):
        assert command in result.output


def test_backfill_then_coverage(tmp_path: Path, scheduler_address: str) -> None:
    repo_path = tmp_path / "repo"
    source = json.dumps({"kind": "synthetic", "start": "2020-01-01", "freq": "1h", **GRID})
    common = [
        "--target",
        str(repo_path),
        "--source",
        source,
        "--scheduler-address",
        scheduler_address,
    ]
    window = ["--start", "2020-01-01", "--end", "2020-01-04", "--freq", "1D"]

    planned = runner.invoke(app, ["backfill", *common, *window, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert "3 of 3 windows would be written" in planned.output
    assert not repo_path.exists()

    filled = runner.invoke(app, ["backfill", *common, *window])
    assert filled.exit_code == 0, filled.output
    assert "72/72 labels hold data, 0 gaps" in filled.output
    expected = SyntheticSource(start="2020-01-01", periods=72, **GRID).open()
    xr.testing.assert_identical(read_back(repository(repo_path)), plain_xarray(expected, tmp_path))

    again = runner.invoke(app, ["backfill", *common, *window])
    assert "0 windows written, 3 already held data" in again.output

    shown = runner.invoke(
        app, ["coverage", "--target", str(repo_path), "--png", str(tmp_path / "c.png")]
    )
    assert shown.exit_code == 0, shown.output
    assert "72/72 labels along 'time' hold data" in shown.output
    assert "no gaps" in shown.output
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_serve_needs_exactly_one_schedule(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--target", str(tmp_path), "--source", source_json()])
    assert result.exit_code == 1
    assert "--interval SECONDS or --cron EXPR" in result.output


def test_create_append_dry_run_and_log(tmp_path: Path, scheduler_address: str) -> None:
    repo_path = tmp_path / "repo"
    common = ["--target", str(repo_path), "--scheduler-address", scheduler_address]

    created = runner.invoke(app, ["create", *common, "--source", source_json(periods=24)])
    assert created.exit_code == 0, created.output
    assert "Committed" in created.output

    planned = runner.invoke(
        app, ["append", *common, "--source", source_json("2020-01-02", 24), "--dry-run"]
    )
    assert planned.exit_code == 0, planned.output
    assert "resize" in planned.output  # the plan table
    before = tip(repository(repo_path))

    appended = runner.invoke(app, ["append", *common, "--source", source_json("2020-01-02", 24)])
    assert appended.exit_code == 0, appended.output
    assert tip(repository(repo_path)) != before
    xr.testing.assert_identical(
        read_back(repository(repo_path)), plain_xarray(synthetic(), tmp_path)
    )

    history = runner.invoke(app, ["log", "--target", str(repo_path)], env={"COLUMNS": "80"})
    assert history.exit_code == 0, history.output
    assert "append" in history.output
    assert "create" in history.output
    # Readable at 80 columns: one block per commit, nothing broken mid-word.
    lines = history.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), history.stdout
    ancestry = list(repository(repo_path).ancestry(branch="main"))
    blocks = [line for line in lines if line.startswith("commit ")]
    assert [b.split()[1] for b in blocks] == [s.id for s in ancestry]  # whole ids, newest first
    words = set(history.stdout.replace(",", " ").split())
    assert set(synthetic().variables) <= words  # every variable name intact
    assert "2020-01-02T00:00:00" in history.stdout or "2020-01-02 00:00:00" in history.stdout


def test_append_with_a_hole_on_gap_and_the_gap_in_the_log(
    tmp_path: Path, scheduler_address: str
) -> None:
    repo_path = tmp_path / "repo"
    common = ["--target", str(repo_path), "--scheduler-address", scheduler_address]
    assert (
        runner.invoke(app, ["create", *common, "--source", source_json(periods=24)]).exit_code == 0
    )
    late = ["--source", source_json("2020-01-02T06", 6)]  # 2020-01-02 00:00 … 05:00 missing

    refused = runner.invoke(app, ["append", *common, *late])
    assert refused.exit_code == 1
    assert "leave a gap on its step 'h'" in refused.stderr

    filled = runner.invoke(app, ["append", *common, *late, "--on-gap", "fill"])
    assert filled.exit_code == 0, filled.output
    back = read_back(repository(repo_path))
    assert back.sizes["time"] == 36
    assert back.air_temperature.isel(time=slice(24, 30)).isnull().all()
    history = runner.invoke(app, ["log", "--target", str(repo_path)], env={"COLUMNS": "100"})
    assert "gap: 2020-01-02T00:00:00 … 2020-01-02T05:00:00 (6 labels)" in history.stdout


def test_region_takes_json(tmp_path: Path, scheduler_address: str) -> None:
    repo_path = tmp_path / "repo"
    common = ["--target", str(repo_path), "--scheduler-address", scheduler_address]
    assert runner.invoke(app, ["create", *common, "--source", source_json()]).exit_code == 0
    window = json.dumps(
        {
            "kind": "python",
            "function": "tests.flows.python_sources:scaled",
            "kwargs": {"start": "2020-01-01T12:00", "periods": 12},
        }
    )

    result = runner.invoke(
        app, ["region", *common, "--source", window, "--region", '{"time": [12, 24]}']
    )

    assert result.exit_code == 0, result.output
    stored = read_back(repository(repo_path))
    xr.testing.assert_identical(
        stored["air_temperature"].isel(time=slice(12, 24)),
        (synthetic()["air_temperature"].isel(time=slice(12, 24)) * 2).assign_attrs(
            stored["air_temperature"].attrs
        ),
    )


def test_errors_are_reported_without_a_traceback(tmp_path: Path, scheduler_address: str) -> None:
    repo_path = tmp_path / "repo"
    common = ["--target", str(repo_path), "--scheduler-address", scheduler_address]
    assert (
        runner.invoke(app, ["create", *common, "--source", source_json(periods=24)]).exit_code == 0
    )

    again = runner.invoke(app, ["create", *common, "--source", source_json(periods=24)])

    assert again.exit_code == 1
    assert "error:" in again.output
    assert "Traceback" not in again.output


# What a normal run must not print: Python's and Prefect's levels, and icechunk's (Rust) one.
NOT_QUIET = ("WARNING", "ERROR", " WARN ", "Traceback")


@pytest.mark.parametrize("api", ["temporary", "running"])
def test_demo_as_a_program_is_quiet(tmp_path: Path, prefect_harness: str, api: str) -> None:
    """The README's command, the installed console script, in a fresh directory: with no
    Prefect API configured (it starts a temporary server, with a Prefect home of its own),
    and against a running API with its lazy write forced onto a new LocalCluster (whose
    workers' start-up and shutdown lines must not show). Either way it prints no warning
    or error, shows the write's progress and says where the data is; the data is exact."""
    program = Path(sys.executable).with_name("icefloe")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("ICEFLOE_SCHEDULER_ADDRESS", "PREFECT_API_URL", "ICEFLOE_THREADS_BELOW_BYTES"):
        env.pop(name, None)
    if api == "temporary":
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        env["PREFECT_PROFILES_PATH"] = str(tmp_path / "prefect-home" / "profiles.toml")
    else:
        env["PREFECT_API_URL"] = prefect_harness
        env["ICEFLOE_THREADS_BELOW_BYTES"] = "0"
    work = tmp_path / "work"
    work.mkdir()

    done = subprocess.run(
        [str(program), "demo", "--days", "2"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    noisy = [line for line in output.splitlines() if any(word in line for word in NOT_QUIET)]
    assert not noisy, output
    assert "distributed.worker" not in output, output
    assert "dask tasks" in output  # the progress bar of the lazy write
    demo = work / "icefloe-demo"
    assert str(demo) in done.stdout
    assert "xr.open_zarr" in done.stdout
    if api == "running":
        assert "Creating a new Dask cluster" in output  # the cluster path was taken
        assert "temporary Prefect server" not in output
    else:
        # started by the command itself (flows/launch.py), and gone with it
        [url] = re.findall(r"temporary Prefect server on (\S+/api)", output)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    expected = SyntheticSource(periods=48).open()
    xr.testing.assert_identical(read_back(repository(demo)), plain_xarray(expected, tmp_path))
