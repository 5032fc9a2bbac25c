"""The ``icefloe`` block every commit carries: what was written, by which run, from where.

It is read back by ``icefloe log`` and by anyone auditing a repository, long after the run's
Prefect records are gone, and it is stored in the repository itself. So it holds
descriptions and a digest of the parameters, never their values: storage options and python
source kwargs may hold secrets, and a secret committed to a repository stays in its history.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from flows.sources import FilesSource, IcechunkSource, PythonSource, SourceModel, ZarrSource
from flows.targets import Target
from tasks.plan import WritePlan

__all__ = ["RunInfo", "commit_metadata", "current_run", "package_version", "parameters_digest"]

_REDACTED = "***"
# Shorter values are too likely to be ordinary words or numbers found in any description.
_MIN_REDACTED_LENGTH = 4


@dataclass(frozen=True)
class RunInfo:
    """The Prefect run that writes; all None outside a run."""

    flow_run_id: str | None = None
    flow_run_name: str | None = None
    deployment: str | None = None


def current_run() -> RunInfo:
    """The flow run this code runs in, from Prefect's run context.

    Read from the flow run the context holds: ``prefect.runtime.deployment`` asks the API
    for the flow run each time to learn that a direct run has no deployment (a round trip
    on every write). Outside a flow run's context (a task on a worker), prefect.runtime."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        from prefect.runtime import deployment, flow_run

        run_id = flow_run.id
        return RunInfo(
            flow_run_id=str(run_id) if run_id else None,
            flow_run_name=flow_run.name if run_id else None,
            deployment=deployment.name if deployment.id else None,
        )
    run = context.flow_run
    deployment_id = run.deployment_id
    return RunInfo(
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        deployment=_deployment_name(str(deployment_id)) if deployment_id else None,
    )


@functools.lru_cache(maxsize=64)
def _deployment_name(deployment_id: str) -> str:
    from prefect.runtime import deployment

    name: str = deployment.name  # the run's own deployment, read once per deployment
    return name


def package_version() -> str:
    try:
        return version("icefloe")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def parameters_digest(parameters: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the parameters as canonical JSON: equal runs share a digest."""
    jsonable = to_jsonable_python(dict(parameters), fallback=str)
    text = json.dumps(jsonable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def commit_metadata(
    *,
    plan: WritePlan,
    source: SourceModel,
    target: Target,
    parameters: Mapping[str, Any],
    run: RunInfo,
) -> dict[str, Any]:
    """The ``icefloe`` commit-metadata block for a write planned as ``plan``."""
    block: dict[str, Any] = {
        "mode": plan.mode,
        "group": plan.group,
        "variables": plan.variables,
        "chunks_written": plan.chunks_written,
        "bytes_written": plan.bytes_written,
        "source": _redact(source.describe(), _option_values(target, source)),
        "parameters_digest": parameters_digest(parameters),
        "flow_run_id": run.flow_run_id,
        "flow_run_name": run.flow_run_name,
        "deployment": run.deployment,
        "icefloe_version": package_version(),
    }
    if plan.append_dim is not None:
        block["append_dim"] = plan.append_dim
    if plan.label_range is not None:
        block["label_range"] = list(plan.label_range)
    if plan.region is not None:
        block["region"] = {dim: [start, stop] for dim, (start, stop) in plan.region.items()}
    if plan.gaps:
        # labels an append (on_gap="fill") wrote as fill values: docs/spec.md
        block["gaps"] = [
            {"first": first, "last": last, "count": count} for first, last, count in plan.gaps
        ]
    if plan.stopped_at is not None:
        block["stopped_before"] = plan.stopped_at
    return block


def _option_values(target: Target, source: SourceModel) -> set[str]:
    """Every storage-option and kwargs value in play: none may reach the metadata.

    The source descriptions already hide credentials; this also hides the allow-listed
    options they show (an endpoint can be internal information too).
    """
    values: set[str] = set()
    models: list[BaseModel] = [target, source]
    if isinstance(source, IcechunkSource):
        models.append(source.target)
    for model in models:
        if isinstance(model, Target | ZarrSource | FilesSource):
            values.update(_leaves(model.storage_options))
        if isinstance(model, PythonSource):
            values.update(_leaves(model.kwargs))
    return {v for v in values if len(v) >= _MIN_REDACTED_LENGTH}


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, str):
        yield value


def _redact(text: str, values: set[str]) -> str:
    # Longest first, so a value that contains another is hidden whole.
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, _REDACTED)
    return text
