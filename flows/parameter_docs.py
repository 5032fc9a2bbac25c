"""The descriptions of flow parameters that the Prefect UI shows beside each form field.

Prefect reads them from the flow function's docstring (a Google-style ``Args:`` section).
Most parameters mean the same in every flow, so their text is written once here and each
flow adds only its own with ``@described(...)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["SHARED", "described"]

SHARED = {
    "target": "The repository (a path, or a file://, s3://, gs:// or az:// URL), its branch, "
    "and non-secret storage options.",
    "source": "Where the data comes from: files, zarr, icechunk, python or synthetic.",
    "group": 'The group inside the repository, e.g. "era5/surface"; empty for the root.',
    "append_dim": 'The dimension to extend, e.g. "time".',
    "encoding": "Per-variable encoding of arrays the run creates, as xarray takes it, e.g. "
    '{"t2m": {"chunks": [24, 180, 360], "dtype": "float32"}}.',
    "dry_run": "Only plan: log what each phase would write, and write nothing.",
    "scheduler_address": "A Dask scheduler (tcp://host:8786) for the heavy write; empty for "
    "a local cluster (or ICEFLOE_SCHEDULER_ADDRESS).",
    "options": "Resuming, batching, staged publishing and locking; defaults suit most runs.",
    "on_overlap": 'What to do with labels the group already holds: "error" refuses the run, '
    '"skip" writes only new labels (re-runs are no-ops), "overwrite" rewrites them and '
    "appends the rest.",
    "on_gap": 'What to do when the labels skip labels of the group\'s step: "error" refuses '
    'the run, "stop" appends only the labels before the first missing one, "fill" writes '
    "the missing ones as fill values and records the gap in the commit.",
    "update_spec": "Let this modify change the structure the group's spec declares (dtype, "
    "dims, chunks, units, time encoding); the spec is updated in the same commit.",
}


def described[F: Callable[..., Any]](**own: str) -> Callable[[F], F]:
    """Append an ``Args:`` section to the function's docstring: ``own`` texts, else SHARED.

    A parameter with no text anywhere is an error when the module is imported, so a new
    parameter cannot reach the UI undescribed.
    """

    def decorate(fn: F) -> F:
        names = list(inspect.signature(fn).parameters)
        undescribed = [n for n in names if n not in own and n not in SHARED]
        if undescribed:
            raise TypeError(f"{fn.__name__}: describe the parameters {undescribed}")
        args = "\n".join(f"    {name}: {own.get(name) or SHARED[name]}" for name in names)
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n"
        return fn

    return decorate
