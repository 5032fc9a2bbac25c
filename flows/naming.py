"""What a run is called, tagged and keyed as in the Prefect UI: what it does, and where.

Prefect names runs at random (olive-bat) and keys nothing; an operator scanning a list of
runs or following an artifact over time needs "append era5.icechunk/surface → 13:00" and
one artifact key per archive and group.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["archive_name", "archive_resource_id", "artifact_key", "run_name", "tag_run", "where"]

log = logging.getLogger(__name__)

_VERBS = {
    "icefloe-create": "create",
    "icefloe-modify": "modify",
    "icefloe-append": "append",
    "icefloe-region": "region",
    "icefloe-backfill": "backfill",
    "icefloe-scheduled-append": "append",
    "icefloe-maintenance": "maintenance",
    "icefloe-validate": "validate",
}


def _field(value: Any, name: str) -> Any:
    # parameters arrive as models, or as the dicts a deployment stored
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def archive_name(repo: str) -> str:
    """The last part of a repository path or URL: ``s3://b/x/era5.icechunk`` → era5.icechunk."""
    return repo.rstrip("/").rsplit("/", 1)[-1] or repo


def archive_resource_id(target: Any) -> str:
    """The event resource id of ``target``'s archive: ``icefloe.archive.era5`` for
    ``s3://bucket/era5.icechunk``. Events about one archive (a backfill request, a
    validation) name it, so that an automation acts on that archive only, never on every
    archive served on the same Prefect server."""
    name = archive_name(str(_field(target, "repo") or "?")).removesuffix(".icechunk")
    return f"icefloe.archive.{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"


def where(target: Any, group: str | None) -> str:
    """``archive/group`` (the archive alone for the root group)."""
    archive = archive_name(str(_field(target, "repo") or "?"))
    return f"{archive}/{group.strip('/')}" if group and group.strip("/") else archive


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        return (
            value.strftime("%Y-%m-%dT%H:%M")
            if value.time() != dt.time()
            else value.strftime("%Y-%m-%d")
        )
    return str(value)


def run_name() -> str:
    """The current flow run's name, from its flow and parameters (Prefect's flow_run_name)."""
    from prefect.runtime import flow_run

    params: Mapping[str, Any] = flow_run.parameters or {}
    flow = str(flow_run.flow_name or "")
    verb = str(params.get("mode") or _VERBS.get(flow, flow.removeprefix("icefloe-")))
    place = where(params.get("target"), params.get("group"))
    if flow == "icefloe-backfill":
        return f"{verb} {place} {_when(params.get('start'))}…{_when(params.get('end'))}"
    until = params.get("window_end") or params.get("scheduled_time")
    if flow == "icefloe-scheduled-append" and until is None:
        until = flow_run.scheduled_start_time
    return f"{verb} {place} → {_when(until)}" if until is not None else f"{verb} {place}"


def artifact_key(kind: str, target: Any, group: str | None) -> str:
    """A stable artifact key per archive and group: the UI follows it from run to run.

    Keys allow lowercase letters, digits and dashes only; a digest of the full repository
    URL keeps two archives with the same last path part apart.
    """
    repo = str(_field(target, "repo") or "")
    slug = re.sub(r"[^a-z0-9]+", "-", where(target, group).lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{repo}|{group or ''}".encode()).hexdigest()[:8]
    return f"icefloe-{kind}-{slug}-{digest}"


def tag_run(target: Any, group: str | None, mode: str) -> None:
    """Tag the current flow run with its archive, group and mode, for filtering in the UI."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return
    tags = {
        "icefloe",
        f"archive:{archive_name(str(_field(target, 'repo') or '?'))}",
        f"group:{group or '/'}",
        f"mode:{mode}",
    }
    try:
        with get_client(sync_client=True) as client:
            current = set(client.read_flow_run(run_id).tags or [])
            if not tags <= current:
                client.update_flow_run(run_id, tags=sorted(current | tags))
    except Exception:  # tags are for people; a run never fails for them
        log.debug("could not tag flow run %s", run_id, exc_info=True)
