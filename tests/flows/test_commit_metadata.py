"""Every commit any flow makes carries the same icefloe block: backfill windows and
scheduled appends included (they used to commit by a path of their own)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import icechunk
import pytest

from flows import Target, backfill_flow, scheduled_append_flow, write_flow
from flows.metadata import package_version
from tasks.coverage import Coverage, full_coverage, recorded_coverage
from tests.conftest import plain_xarray, read_back
from tests.flows.python_sources import GRID, synthetic

pytestmark = pytest.mark.usefixtures("prefect_harness")

REQUIRED = {
    "mode",
    "group",
    "variables",
    "source",
    "parameters_digest",
    "flow_run_id",
    "flow_run_name",
    "deployment",
    "icefloe_version",
    "run_key",
    "base_snapshot",
    "coverage",
}


def source(freq: str = "1h") -> dict[str, Any]:
    return {"kind": "synthetic", "start": "2020-01-01", "freq": freq, **GRID}


def blocks(path: Path) -> list[dict[str, Any]]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    snapshots = list(repo.ancestry(branch="main"))[:-1]  # the last is the repository's creation
    return [s.metadata["icefloe"] for s in reversed(snapshots)]


def assert_coverage_recorded(path: Path) -> list[Coverage]:
    """Every commit's coverage record equals its snapshot judged label by label."""
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    records = []
    for snapshot in list(repo.ancestry(branch="main"))[:-1]:
        recorded = recorded_coverage(snapshot.metadata, None, "time")
        assert recorded == full_coverage(repo.readonly_session(snapshot_id=snapshot.id))
        records.append(recorded)
    return records[::-1]


def assert_complete(block: dict[str, Any]) -> None:
    assert block.keys() >= REQUIRED, f"missing {REQUIRED - block.keys()} in {block}"
    assert block["parameters_digest"].startswith("sha256:")
    assert block["flow_run_id"]
    assert block["icefloe_version"] == package_version()
    assert block["variables"]
    assert "label_range" in block or "region" in block, block


def test_backfill_commits_carry_the_full_block(tmp_path: Path, scheduler_address: str) -> None:
    target = Target(repo=str(tmp_path / "repo"))

    backfill_flow(
        target,
        source(),
        start=dt.datetime(2020, 1, 1),
        end=dt.datetime(2020, 1, 3),
        freq="12h",
        batch=2,
        scheduler_address=scheduler_address,
    )

    written = blocks(tmp_path / "repo")
    # the first window creates the group, one commit extends the axis, then the windows'
    # region writes are published in groups, each commit naming the windows it holds
    assert [b["mode"] for b in written[:2]] == ["append", "append"]
    assert {b["mode"] for b in written[2:]} == {"region"}
    for block in written:
        assert_complete(block)
    assert len({b["flow_run_id"] for b in written}) == 1
    windows = sorted(w for b in written[2:] for w in b["windows"])
    assert windows == [[12, 24], [24, 36], [36, 48]]
    for block in written[2:]:
        spans = block["windows"]
        assert block["region"] == {"time": [min(w[0] for w in spans), max(w[1] for w in spans)]}
    assert read_back(target.open_repository()).identical(
        plain_xarray(synthetic("2020-01-01", 48), tmp_path)
    )
    # the extension leaves a gap that the windows (two committing at a time) close
    records = assert_coverage_recorded(tmp_path / "repo")
    assert [(g.start, g.stop) for g in records[1].gaps] == [(12, 48)]
    assert records[-1].gaps == ()


def test_scheduled_append_commit_carries_the_full_block(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "repo"))

    scheduled_append_flow(
        target,
        source(),
        scheduled_time=dt.datetime(2020, 1, 1, 23),
        scheduler_address=scheduler_address,
    )

    [block] = blocks(tmp_path / "repo")
    assert_complete(block)
    assert block["mode"] == "append"
    assert block["label_range"] == ["2020-01-01 00:00:00", "2020-01-01 23:00:00"]
    assert assert_coverage_recorded(tmp_path / "repo")[0].n_labels == 24


def test_write_flow_runs_the_chosen_mode_itself(tmp_path: Path, scheduler_address: str) -> None:
    target = Target(repo=str(tmp_path / "repo"))
    periods = {**source(), "periods": 24}

    write_flow(target, periods, mode="create", scheduler_address=scheduler_address)
    result = write_flow(
        target,
        {**periods, "start": "2020-01-02"},
        mode="append",
        append_dim="time",
        region={"time": (0, 1)},  # another mode's option: the UI form sends them all
        scheduler_address=scheduler_address,
    )

    assert result.mode == "append"
    assert [b["mode"] for b in blocks(tmp_path / "repo")] == ["create", "append"]
    assert read_back(target.open_repository()).identical(
        plain_xarray(synthetic("2020-01-01", 48), tmp_path)
    )
