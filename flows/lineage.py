"""Lineage in the Prefect UI: every commit materializes the archive's asset.

The asset is the group of the repository, keyed by its storage URL and the group
(``s3://bucket/era5.icechunk/surface``; a local path as ``file:///…``); the source is its
upstream asset, keyed the same way (an ``icechunk`` source by its own archive's key, so
archives written from archives chain up). Each materialization carries what the commit
holds as asset metadata: the snapshot id, the branch, the mode, the label range or region
and the variables. So the UI's asset graph, and the events behind it
(``prefect.asset.materialization.succeeded``), say which run produced which snapshot from
what. Keys hold no credentials: URLs lose their user info, query and fragment first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE

from flows.naming import where
from flows.sources import (
    FilesSource,
    IcechunkSource,
    PythonSource,
    SourceModel,
    SyntheticSource,
    ZarrSource,
)
from flows.targets import Target, safe_url

__all__ = ["archive_asset_key", "materialize_commit", "source_asset_keys"]

# characters Prefect refuses in asset keys (prefect.types.names.RESTRICTED_ASSET_CHARACTERS)
_RESTRICTED = re.compile(r"[\s#?&%\"'<>\[\]{}|\\^`\x00]")
_MAX_KEY = 512


def _key(url: str) -> str:
    return _RESTRICTED.sub("_", url)[:_MAX_KEY]


def _location(path_or_url: str) -> str:
    """A URL for a path or URL: local paths become ``file://`` URLs of their absolute path."""
    if "://" in path_or_url:
        return safe_url(path_or_url)
    return Path(path_or_url).expanduser().absolute().as_uri()


def archive_asset_key(target: Target, group: str | None) -> str:
    """The asset key of ``group`` in ``target``'s repository."""
    url = _location(target.repo).rstrip("/")
    return _key(f"{url}/{group.strip('/')}" if group and group.strip("/") else url)


def source_asset_keys(source: SourceModel) -> list[str]:
    """The upstream asset keys of a source: the files (as their patterns), the store, the
    archive, or the generating function."""
    if isinstance(source, FilesSource):
        return [_key(_location(path)) for path in source.paths]
    if isinstance(source, ZarrSource):
        url = _location(source.url).rstrip("/")
        return [_key(f"{url}/{source.group.strip('/')}" if source.group else url)]
    if isinstance(source, IcechunkSource):
        return [archive_asset_key(source.target, source.group)]
    if isinstance(source, PythonSource):
        return [_key(f"python://{source.function}")]
    if isinstance(source, SyntheticSource):
        return [
            _key(f"synthetic://weather/{source.freq}/{source.ny}x{source.nx}/{source.calendar}")
        ]
    return []


def materialize_commit(
    target: Target,
    source: SourceModel,
    group: str | None,
    snapshot_id: str,
    metadata: Mapping[str, Any],
) -> None:
    """Record the commit ``snapshot_id`` as a materialization of the group's asset, with the
    source as its upstream asset (a task of the flow run, after its commit)."""
    key = archive_asset_key(target, group)
    asset = Asset(
        key=key,
        properties=AssetProperties(
            name=where(target, group),
            description=(
                f"Icechunk {'group ' + group if group else 'root group'} of "
                f"{safe_url(target.repo)}, written by icefloe"
            ),
        ),
    )
    described = {
        "snapshot_id": snapshot_id,
        "branch": target.branch,
        **{
            k: metadata[k]
            for k in ("mode", "group", "variables", "append_dim", "label_range", "region")
            if metadata.get(k) is not None
        },
        "source": metadata.get("source"),
    }
    task = materialize(
        asset,
        asset_deps=source_asset_keys(source),
        by="icefloe",
        name="materialize",
        task_run_name=f"materialize {where(target, group)}",
        cache_policy=NO_CACHE,
        persist_result=False,
    )(_record)
    task(key, described)


def _record(key: str, described: dict[str, Any]) -> str:
    add_asset_metadata(key, described)
    return str(described["snapshot_id"])
