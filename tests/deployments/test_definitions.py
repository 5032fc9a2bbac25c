"""`deployments/prefect.yaml` (for `prefect deploy`) and `icefloe serve` define the same
deployments: the same names, flows, kinds of trigger and limits."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from deployments.serve import build_deployments
from flows.sources import SyntheticSource
from flows.targets import Target

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
        }
        for d in spec["deployments"]
    }


def _from_serve() -> dict[str, dict[str, Any]]:
    deployments = build_deployments(
        target=Target(repo="/tmp/archive"), source=SyntheticSource(), interval=3600
    )
    described = {}
    for d in deployments:
        limit = d.concurrency_limit
        described[d.name] = {
            "flow": d.flow_name,
            "scheduled": bool(d.schedules),
            "triggered": bool(d.triggers),
            "enforced": bool(d.enforce_parameter_schema),
            "concurrency_limit": getattr(limit, "limit", limit),
        }
    return described


def test_prefect_yaml_and_serve_define_the_same_deployments() -> None:
    from_yaml, from_serve = _from_yaml(), _from_serve()

    assert set(from_yaml) == {"append-scheduled", "write", "backfill", "maintenance"}
    assert from_yaml == from_serve
