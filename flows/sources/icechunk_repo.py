"""``icechunk``: a group of another Icechunk repository, read at a branch tip."""

from collections.abc import Mapping
from typing import Literal

import xarray as xr
from pydantic import (
    ConfigDict,
    Field,
)

from flows.sources.base import (
    SourceBase,
)
from flows.sources.window import WindowBound, select_window
from flows.targets import (
    Target,
    TargetNotFoundError,
)
from tasks.errors import SourceNotFoundError


class IcechunkSource(SourceBase):
    """Another Icechunk repository (or another branch or snapshot of the same one)."""

    model_config = ConfigDict(title="Icechunk")

    kind: Literal["icechunk"] = Field(
        default="icechunk", description="An Icechunk repository read at a branch or snapshot."
    )
    target: Target = Field(description="The repository and branch to read.")
    group: str | None = Field(default=None, description="Group to read; null for the root.")
    snapshot_id: str | None = Field(
        default=None,
        description="Snapshot to read instead of the branch tip; null reads the branch tip.",
    )

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        append_dim: str = "time",
        credentials: Mapping[str, str] | None = None,
    ) -> xr.Dataset:
        """Open a read-only session lazily, cut to [start, end) along ``append_dim``.

        ``credentials`` are the contents of ``target.credentials_secret_block`` when the
        caller resolved it. The read-only session pickles, so dask workers can read from it.
        """
        import icechunk  # deferred: only this kind needs it at open time

        repo = self.target.open_repository(credentials=credentials)
        where = self.target.describe()
        try:
            if self.snapshot_id:
                session = repo.readonly_session(snapshot_id=self.snapshot_id)
            else:
                session = repo.readonly_session(branch=self.target.branch)
        except icechunk.RefNotFoundError as err:
            branches = sorted(repo.list_branches())
            raise TargetNotFoundError(
                f"the branch {self.target.branch!r} does not exist in {where}: set "
                f"IcechunkSource.target.branch to one of {branches}"
            ) from err
        except (icechunk.SnapshotNotFoundError, icechunk.InvalidInputError) as err:
            raise TargetNotFoundError(
                f"the snapshot {self.snapshot_id!r} does not exist in {where}: set "
                "IcechunkSource.snapshot_id to an existing snapshot id (see `icefloe log`), or "
                "to null for the branch tip"
            ) from err
        try:
            ds = xr.open_zarr(session.store, group=self.group, consolidated=False, chunks={})
        except (FileNotFoundError, KeyError) as err:
            raise SourceNotFoundError(
                f"the group {self.group!r} does not exist in {where}: set IcechunkSource.group "
                "to an existing group (null for the root)"
            ) from err
        return select_window(ds, append_dim, start, end, self.describe())

    def describe(self) -> str:
        group = f" group {self.group}" if self.group else ""
        snapshot = f" snapshot {self.snapshot_id}" if self.snapshot_id else ""
        return f"icechunk {self.target.describe()}{group}{snapshot}"
