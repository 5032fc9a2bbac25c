"""Run the writer's phases the way every caller does: plan, metadata, eager, verify, lazy."""

from __future__ import annotations

from collections.abc import Callable

import icechunk
import xarray as xr

from tasks.plan import WritePlan
from tasks.writer import XarrayDatasetWriter


def write(
    repo: icechunk.Repository,
    ds: xr.Dataset,
    choose: Callable[[XarrayDatasetWriter], XarrayDatasetWriter],
    message: str = "write",
) -> WritePlan:
    """All phases in order and one commit; a writer that raises leaves nothing committed."""
    session = repo.writable_session("main")
    writer = choose(XarrayDatasetWriter(ds, store=session.store))
    plan = writer.plan()
    writer.write_metadata()
    writer.write_eager()
    writer.verify()
    writer.write_lazy()
    if session.has_uncommitted_changes:
        session.commit(message)
    return plan
