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
    validate_flow,
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
    validate_flow,
    write_flow,
]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow: Any) -> None:
    properties = parameter_schema(flow.fn).model_dump()["properties"]

    undescribed = [name for name, spec in properties.items() if not spec.get("description")]
    assert not undescribed, f"{flow.name}: no description for {undescribed}"


def _walk(node: Any, path: str = "") -> Any:
    """Every (path, schema node) below ``node``."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_the_schema_uses_only_shapes_the_default_ui_renders_as_fields(flow: Any) -> None:
    # const: "is a const and cannot be changed"; a null branch: 'Property is type "None"';
    # oneOf (the discriminated Source union): a raw JSON box in the default (Vue) UI
    schema = parameter_schema(flow.fn).model_dump()
    problems = [
        f"{path}: {shape}"
        for path, node in _walk(schema)
        for shape in ("const", "oneOf", "discriminator", "prefixItems")
        if shape in node and not path.endswith("/properties")
    ]
    problems += [path for path, node in _walk(schema) if node.get("type") == "null"]
    assert not problems, f"{flow.name}: {problems}"


def test_source_is_a_tab_per_kind_and_region_names_its_two_forms() -> None:
    properties = parameter_schema(write_flow.fn).model_dump()["properties"]
    kinds = [b["$ref"].rsplit("/", 1)[-1] for b in properties["source"]["anyOf"]]
    assert kinds == [
        "FilesSource",
        "ZarrSource",
        "IcechunkSource",
        "PythonSource",
        "SyntheticSource",
    ]
    assert [b["title"] for b in properties["region"]["anyOf"]] == [
        "auto: placed by the source's labels",
        "per dimension: [start, stop) indices",
    ]
    assert properties["group"] == {
        "default": None,
        "description": 'The group inside the repository, e.g. "era5/surface"; empty for the root.',
        "position": 3,
        "title": "group",
        "type": "string",
    }


@pytest.mark.parametrize(
    "parameters",
    [
        {"region": "auto", "group": None, "scheduler_address": None, "encoding": None},
        {"region": {"time": [24, 48]}, "group": "era5", "mode": "region"},
        {"region": {"time": "auto"}, "options": {"batches": 2, "run_key": None}},
    ],
)
def test_values_the_old_schema_took_still_pass_the_servers_check_and_the_flow(
    tmp_path: Any, parameters: dict[str, Any]
) -> None:
    # what a served deployment with enforce_parameter_schema checks (prefect's server code
    # path: validate(parameters, schema, raise_on_error=True)), then what the flow validates
    from prefect.utilities.schema_tools.validation import validate

    from deployments.serve import build_deployments
    from flows.sources import SyntheticSource
    from flows.targets import Target

    served = build_deployments(Target(repo=str(tmp_path)), SyntheticSource(), interval=60)
    write = next(d for d in served if d.name == "write")
    schema = write._parameter_openapi_schema.model_dump()
    values = {
        "target": {"repo": "./archive", "credentials_secret_block": None},
        "source": {"kind": "files", "paths": ["a.nc"], "engine": None, "chunks": None},
        **parameters,
    }
    validate(values, schema, raise_on_error=True)
    validated = write_flow.validate_parameters(values)
    assert validated["source"].paths == ["a.nc"]
