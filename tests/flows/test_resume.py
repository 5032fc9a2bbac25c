"""A run killed anywhere leaves the branch as it was; re-run with its key, it resumes.

The flow runs in a subprocess that SIGKILLs itself at a phase boundary, in the middle
of a batch, or before a given batch (tests/flows/kill_run.py); the re-run happens here
with the same run key and is compared with an uninterrupted run of the same request.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import icechunk
import pytest
import xarray as xr
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

import tasks.batches
from flows import Target, append_flow, create_flow
from flows.sources import SyntheticSource
from flows.write import RunOptions
from tests.conftest import plain_xarray, read_back, tip
from tests.flows import kill_run
from tests.flows.durability_sources import FIRST_DAY

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def _created(tmp_path: Path, scheduler_address: str) -> tuple[Target, icechunk.Repository]:
    target = Target(repo=str(tmp_path / "repo"))
    create_flow(target, FIRST_DAY, scheduler_address=scheduler_address)
    return target, icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))


def _run_and_kill(
    target: Target, scheduler_address: str, point: str, prefect_harness: str, count_file: Path
) -> None:
    count_file.touch()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.flows.kill_run",
            target.repo,
            scheduler_address,
            point,
            str(count_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == -9, (
        f"the run was not killed at {point}:\n{done.stdout}\n{done.stderr}"
    )


def _expected(tmp_path: Path) -> xr.Dataset:
    full = SyntheticSource(**{**FIRST_DAY, "periods": 24 + 120}).open()
    return plain_xarray(full.drop_vars([]), tmp_path, name="expected")


@pytest.mark.parametrize(
    "point", ["write_metadata", "write_eager", "verify", "write_lazy", "mid_batch", "commit"]
)
def test_a_killed_run_changes_nothing_and_its_rerun_converges(
    tmp_path: Path,
    scheduler_address: str,
    prefect_harness: str,
    point: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, repo = _created(tmp_path, scheduler_address)
    before = tip(repo)

    _run_and_kill(target, scheduler_address, point, prefect_harness, tmp_path / "batches")

    assert tip(repo) == before
    assert repo.list_branches() == {"main"}
    kill_run.run(target.repo, scheduler_address)
    xr.testing.assert_identical(read_back(repo), _expected(tmp_path))


def test_a_run_killed_at_80_percent_reruns_only_the_last_batch(
    tmp_path: Path, scheduler_address: str, prefect_harness: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, repo = _created(tmp_path, scheduler_address)
    before = tip(repo)
    counted = tmp_path / "batches"

    _run_and_kill(target, scheduler_address, f"batch:{kill_run.BATCHES}", prefect_harness, counted)
    assert counted.read_text().count("batch") == kill_run.BATCHES - 1
    assert tip(repo) == before

    rerun: list[int] = []
    original = tasks.batches.write_batch
    monkeypatch.setattr(
        tasks.batches, "write_batch", lambda *a, **k: rerun.append(1) or original(*a, **k)
    )
    result = kill_run.run(target.repo, scheduler_address)

    assert len(rerun) == 1
    xr.testing.assert_identical(read_back(repo), _expected(tmp_path))
    del result


def test_a_rerun_after_the_branch_moved_starts_from_the_new_tip(
    tmp_path: Path, scheduler_address: str, prefect_harness: str
) -> None:
    target, repo = _created(tmp_path, scheduler_address)
    _run_and_kill(target, scheduler_address, "batch:3", prefect_harness, tmp_path / "batches")
    # someone else appends the first hours of the window meanwhile
    append_flow(
        target,
        {**kill_run.WINDOW, "periods": 6},
        append_dim="time",
        scheduler_address=scheduler_address,
    )
    moved = tip(repo)

    result = append_flow(
        target,
        kill_run.WINDOW,
        append_dim="time",
        on_overlap="skip",
        scheduler_address=scheduler_address,
        options=RunOptions(run_key=kill_run.RUN_KEY, batches=kill_run.BATCHES, serialize=False),
    )

    assert result.snapshot_id != moved
    xr.testing.assert_identical(read_back(repo), _expected(tmp_path))


def test_a_repository_created_again_at_the_same_path_does_not_resume_the_old_one(
    tmp_path: Path, scheduler_address: str, prefect_harness: str
) -> None:
    target, repo = _created(tmp_path, scheduler_address)
    _run_and_kill(target, scheduler_address, "batch:3", prefect_harness, tmp_path / "batches")
    shutil.rmtree(target.repo)
    target, repo = _created(tmp_path, scheduler_address)  # same path, same first snapshot id

    rerun: list[int] = []
    original = tasks.batches.write_batch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            tasks.batches, "write_batch", lambda *a, **k: rerun.append(1) or original(*a, **k)
        )
        kill_run.run(target.repo, scheduler_address)

    assert len(rerun) == kill_run.BATCHES  # nothing taken from the deleted repository
    xr.testing.assert_identical(read_back(repo), _expected(tmp_path))
