"""`deployments/prefect.yaml` (for `prefect deploy`) and `icefloe serve` define the same
deployments: the same names, flows, kinds of trigger and limits."""

from __future__ import annotations

import datetime as dt
import importlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from deployments.serve import build_deployments
from flows.sources import FilesSource, SyntheticSource
from flows.targets import Target
from tasks.writer import to_icechunk

PREFECT_YAML = Path(__file__).parents[2] / "deployments" / "prefect.yaml"


def _flow_name(entrypoint: str) -> str:
    path, function = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return str(getattr(module, function).name)


def _from_yaml() -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return {
        d["name"]: {
            "flow": _flow_name(d["entrypoint"]),
            "scheduled": bool(d.get("schedules")),
            "triggered": bool(d.get("triggers")),
            "enforced": bool(d.get("enforce_parameter_schema")),
            "concurrency_limit": d.get("concurrency_limit"),
            "automations": [
                {"name": t["name"], "resource": t["match"]["prefect.resource.id"]}
                for t in d.get("triggers", [])
            ],
        }
        for d in spec["deployments"]
    }


def _from_serve() -> dict[str, dict[str, Any]]:
    # the yaml's example archive: s3://my-bucket/archives/era5.icechunk
    deployments = build_deployments(
        target=Target(repo="/tmp/era5.icechunk"), source=SyntheticSource(), interval=3600
    )
    described = {}
    for d in deployments:
        limit = d.concurrency_limit
        described[d.name] = {
            "flow": d.flow_name,
            "scheduled": bool(d.schedules),
            "triggered": bool(d.triggers),
            "enforced": bool(d.enforce_parameter_schema),
            "concurrency_limit": (
                {
                    "limit": limit,
                    "collision_strategy": d.concurrency_options.collision_strategy.value,
                }
                if limit is not None
                else None
            ),
            "automations": [
                {"name": t.name, "resource": t.match["prefect.resource.id"][0]} for t in d.triggers
            ],
        }
    return described


def test_prefect_yaml_and_serve_define_the_same_deployments() -> None:
    from_yaml, from_serve = _from_yaml(), _from_serve()

    assert set(from_yaml) == {"append-scheduled", "write", "backfill", "validate", "maintenance"}
    assert from_yaml == from_serve


def test_the_backfill_automation_is_named_described_and_scoped_to_its_archive() -> None:
    (backfill,) = [
        d
        for d in build_deployments(
            target=Target(repo="s3://bucket/x/era5.icechunk"),
            source=SyntheticSource(),
            group="surface",
            interval=60,
        )
        if d.name == "backfill"
    ]
    (trigger,) = backfill.triggers
    assert trigger.name == "icefloe: backfill era5 on request"
    assert "icefloe.archive.era5" in (trigger.description or "")
    assert trigger.match["prefect.resource.id"] == ["icefloe.archive.era5"]
    # an event without freq or group gets the deployment's own, not an empty string
    assert trigger.parameters == {
        "start": "{{ event.payload.start }}",
        "end": "{{ event.payload.end }}",
        "freq": '{{ (event.payload.freq or "1D") }}',
        "group": '{{ (event.payload.group or "surface") }}',
    }


def test_serve_says_what_a_first_run_writes_and_start_shortens_it(tmp_path: Path) -> None:
    from deployments.serve import what_runs_will_do
    from flows.scheduled import first_run_preview

    now = dt.datetime(2026, 12, 1, 13, 30, tzinfo=dt.UTC)
    # the synthetic source starts in 2020: every hour since then, said before it happens
    hours = len(pd.date_range("2020-01-01", "2026-12-01 13:00", freq="1h"))
    preview = first_run_preview(SyntheticSource(), now)
    assert f"writes {hours:,} labels (2020-01-01 00:00:00 … 2026-12-01 13:00:00" in preview
    assert "--start" in preview
    later = first_run_preview(SyntheticSource(ny=2, nx=2), now, dt.datetime(2026, 12, 1, 10, 30))
    assert (
        "writes 3 labels (2026-12-01 11:00:00 … 2026-12-01 13:00:00, every 1h, about 192 B)"
        in later
    )
    # a kind that cannot count its labels without opening them says its window
    files = FilesSource(paths=["in/*.nc"])
    assert "from the source's first label up to 2026-12-01 13:30:00" in first_run_preview(
        files, now
    )

    target = Target(repo=str(tmp_path / "archive"))
    (first, event, validation) = what_runs_will_do(target, SyntheticSource(), now=now)
    assert "the first run creates the group and writes" in first
    assert "--resource-id icefloe.archive.archive" in event
    assert "validation after each scheduled append and every 1:00:00" in validation
    session = target.open_repository(create=True).writable_session("main")
    to_icechunk(SyntheticSource(start="2026-12-01", periods=3, ny=2, nx=2).open(), session)
    session.commit("three labels")
    (next_run, _, _) = what_runs_will_do(target, SyntheticSource(), now=now)
    assert "appends the labels after 2026-12-01 02:00:00" in next_run


def test_served_runs_keep_chatter_off_the_console_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.serve import quiet_run_environment

    monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED", raising=False)
    monkeypatch.setenv("ICECHUNK_LOG", "debug")  # the user's choice wins
    assert quiet_run_environment() == {"DASK_LOGGING__DISTRIBUTED": "warning"}


def test_the_late_data_policy_is_a_parameter_of_both_scheduled_appends() -> None:
    """``late_data`` (docs/spec.md) is set the same way by prefect.yaml and ``icefloe serve``,
    and ``serve --late-data hole`` reaches the deployment without editing YAML."""
    from_yaml = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    target, source = Target(repo="/tmp/era5.icechunk"), SyntheticSource()

    def scheduled(**kwargs: Any) -> dict[str, Any]:
        (deployment,) = [
            d
            for d in build_deployments(target=target, source=source, interval=60, **kwargs)
            if d.name == "append-scheduled"
        ]
        return dict(deployment.parameters)

    assert from_yaml["append-scheduled"]["parameters"]["late_data"] == "wait"
    assert scheduled()["late_data"] == "wait"
    assert scheduled(late_data="hole")["late_data"] == "hole"
