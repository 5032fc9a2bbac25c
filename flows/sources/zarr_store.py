"""``zarr``: a Zarr store, local or remote."""

from typing import Literal

import xarray as xr
from pydantic import (
    ConfigDict,
    Field,
    field_validator,
)

from flows.sources.base import (
    SourceBase,
    check_no_credentials,
    fsspec_options,
    shown_options,
)
from flows.sources.window import WindowBound, select_window
from flows.targets import (
    safe_url,
)
from tasks.errors import SourceNotFoundError


class ZarrSource(SourceBase):
    """A Zarr store (v2 or v3), local or behind an fsspec URL."""

    model_config = ConfigDict(title="Zarr")

    kind: Literal["zarr"] = Field(default="zarr", description="A Zarr store.")
    url: str = Field(
        description="Path or fsspec URL of the Zarr store (e.g. s3://bucket/data.zarr).",
        examples=["data/weather.zarr"],
    )
    group: str | None = Field(default=None, description="Group inside the store; null for root.")
    chunks: dict[str, int] | None = Field(
        default=None,
        description="Dask chunk length per dimension; null follows the store's chunks.",
    )
    storage_options: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description=(
            "Non-secret fsspec options (endpoint_url, anon, region ...). Credentials come from "
            "the environment, never from here."
        ),
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ZarrSource.url is empty: set the path or URL of the Zarr store")
        if "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                f"ZarrSource.url {safe_url(value)!r} carries user information before '@': "
                "remove it and provide credentials through the environment"
            )
        return value.strip()

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(
        cls, value: dict[str, str | int | bool]
    ) -> dict[str, str | int | bool]:
        check_no_credentials("ZarrSource.storage_options", value)
        return value

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        append_dim: str = "time",
    ) -> xr.Dataset:
        """Open the store lazily, cut to [start, end) along ``append_dim``."""
        try:
            ds = xr.open_zarr(
                self.url,
                group=self.group,
                chunks=self.chunks if self.chunks is not None else {},
                consolidated=None,
                storage_options=fsspec_options(self.url, self.storage_options) or None,
            )
        except (FileNotFoundError, KeyError) as err:  # zarr raises KeyError for a missing group
            where = f"group {self.group!r} of " if self.group else ""
            raise SourceNotFoundError(
                f"cannot open {where}the Zarr store {safe_url(self.url)!r}: {err}; fix "
                "ZarrSource.url" + (" or ZarrSource.group" if self.group else "")
            ) from err
        return select_window(ds, append_dim, start, end, self.describe())

    def describe(self) -> str:
        group = f" group {self.group}" if self.group else ""
        return f"zarr {safe_url(self.url)}{group}{shown_options(self.storage_options)}"
