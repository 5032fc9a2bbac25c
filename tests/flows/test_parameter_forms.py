"""The parameters of every deployed flow render as a self-explaining form in the Prefect UI."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema

from flows import (
    append_flow,
    backfill_flow,
    create_flow,
    maintenance_flow,
    modify_flow,
    region_flow,
    scheduled_append_flow,
    write_flow,
)

FLOWS = [
    append_flow,
    backfill_flow,
    create_flow,
    maintenance_flow,
    modify_flow,
    region_flow,
    scheduled_append_flow,
    write_flow,
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow: Any) -> None:
    properties = parameter_schema(flow.fn).model_dump()["properties"]

    undescribed = [name for name, spec in properties.items() if not spec.get("description")]
    assert not undescribed, f"{flow.name}: no description for {undescribed}"
