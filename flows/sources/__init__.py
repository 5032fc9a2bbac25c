"""What a flow writes: the Source models, a pydantic union discriminated by ``kind``.

Sources are flow parameters, so they must survive a JSON round trip (deployments, the
Prefect UI form, run records) and must never carry secrets: describe() is copied into logs and
commit metadata, which is why it shows allow-listed option keys only and never kwargs values.

Every kind opens lazily with ``open(start=None, end=None, append_dim="time")``. Scheduled and
backfill runs pass a half-open window ``[start, end)`` and the run's append dimension; how
each kind honours it:

- ``files``: ``{start:%Y%m%d}`` / ``{end:...}`` placeholders in the paths are filled, and the
  result is cut to the window along ``append_dim``;
- ``zarr`` and ``icechunk``: cut to the window along ``append_dim``;
- ``python``: the function receives ``start=`` and ``end=`` and answers for itself;
- ``synthetic``: generates exactly the labels in the window.
"""

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from flows.forms import FORM
from flows.options import loads_json, validate
from flows.sources.base import SourceBase, fsspec_options
from flows.sources.files import FilesSource
from flows.sources.icechunk_repo import IcechunkSource
from flows.sources.python_function import PythonSource
from flows.sources.synthetic import SyntheticSource
from flows.sources.window import WindowBound
from flows.sources.zarr_store import ZarrSource
from tasks.errors import RequestError

__all__ = [
    "FilesSource",
    "IcechunkSource",
    "PythonSource",
    "Source",
    "SourceAdapter",
    "SourceBase",
    "SourceModel",
    "SyntheticSource",
    "WindowBound",
    "ZarrSource",
    "fsspec_options",
    "parse_source",
]

type SourceModel = FilesSource | ZarrSource | IcechunkSource | PythonSource | SyntheticSource

Source = Annotated[
    FilesSource | ZarrSource | IcechunkSource | PythonSource | SyntheticSource,
    Field(discriminator="kind"),
    # published as anyOf (a tab per kind in either Prefect UI); validation still uses `kind`
    FORM,
]
"""Any source, told apart by ``kind``; what flows take as their ``source`` parameter."""

SourceAdapter: TypeAdapter[Source] = TypeAdapter(Source)
"""Validates and serialises a Source: ``SourceAdapter.validate_python(dict)``,
``validate_json(str)``, ``dump_json(source)``, ``json_schema()``."""

SOURCE_EXAMPLE = '{"kind": "synthetic", "periods": 48}'
"""A valid source spec, shown in errors about a malformed one."""

_SOURCE_CLASSES = (FilesSource, ZarrSource, IcechunkSource, PythonSource, SyntheticSource)


def parse_source(
    value: str | Mapping[str, Any] | SourceModel, *, name: str = "the source"
) -> Source:
    """A Source from a model, a dict, a JSON object string, or a plain path or glob (files).

    Raises RequestError (a ValueError) in the user's terms, naming the option (``name``,
    e.g. ``--source``), the key at fault and a valid example.
    """
    if isinstance(value, _SOURCE_CLASSES):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RequestError(
                f"{name} is empty: give a path or glob of files, or a JSON source spec such "
                f"as {SOURCE_EXAMPLE}"
            )
        if not text.startswith(("{", "[")):
            return FilesSource(paths=[text])
        value = loads_json(name, text, SOURCE_EXAMPLE)
    if isinstance(value, Mapping):
        return validate(name, SourceAdapter, dict(value), SOURCE_EXAMPLE)
    raise TypeError(
        f"cannot make a source from a {type(value).__name__}: pass a Source model, a dict, a "
        "JSON string or a path"
    )
