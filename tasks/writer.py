"""The phased writer: plan, write_metadata, write_eager, verify, write_lazy, then one commit.

Built on public APIs only: xarray's ``to_zarr(compute=False)`` creates arrays (with
in-memory values wrapped in dask so that no values are written yet), zarr's array
API resizes and writes in-memory values, and ``icechunk.dask.store_dask`` writes the
dask-backed values into a fork of the session, which is merged back. Nothing here
commits: the caller commits the session once, or discards it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import icechunk
import icechunk.dask
import numpy as np
import xarray as xr
import zarr

from tasks.batches import LazyBatch, split_into_batches, write_batch
from tasks.chunking import Region, align_to_zarr_chunks, full_region, shared_chunks
from tasks.encoding import encode_for_store
from tasks.errors import ChunkConflictError, PhaseOrderError, PlanError
from tasks.plan import ArrayWrite, WritePlan
from tasks.planners import (
    AppendPlanner,
    CreatePlanner,
    ModifyPlanner,
    Planned,
    RegionPlanner,
)
from tasks.request import Encoding, OnGap, OnOverlap, RegionSpec, WriteRequest
from tasks.spec import write_spec
from tasks.stored import StoredGroup, array_path, stored_encodings
from tasks.verify import verify_store

__all__ = ["XarrayDatasetWriter", "store_dask", "to_icechunk"]

log = logging.getLogger(__name__)

PHASES = ("plan", "write_metadata", "write_eager", "verify", "write_lazy")


@dataclass
class XarrayDatasetWriter:
    """Writes one Dataset into one group of a writable icechunk session, phase by phase.

    ``for_*`` methods return a new writer for a mode; phases then run in order:
    ``plan`` (optional, also run by ``write_metadata``), ``write_metadata``,
    ``write_eager``, ``verify``, ``write_lazy``. A phase called out of order raises
    PhaseOrderError. A writer that raised leaves the session to be discarded, never
    committed.
    """

    dataset: xr.Dataset = field(repr=False)
    store: icechunk.IcechunkStore = field(kw_only=True, repr=False)
    request: WriteRequest | None = field(default=None, kw_only=True)
    _planned: Planned | None = field(default=None, init=False, repr=False)
    _done: list[str] = field(default_factory=list, init=False, repr=False)
    _broken: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.dataset, xr.DataArray):
            self.dataset = _as_dataset(self.dataset)
        if not isinstance(self.dataset, xr.Dataset):
            raise TypeError(
                f"XarrayDatasetWriter writes an xarray.Dataset, got {type(self.dataset).__name__}"
            )
        if not isinstance(self.store, icechunk.IcechunkStore):
            raise TypeError(
                "store must be a writable icechunk session's store (session.store), got "
                f"{type(self.store).__name__}"
            )

    # -- modes -------------------------------------------------------------------------

    def for_request(self, request: WriteRequest) -> XarrayDatasetWriter:
        """A writer for ``request``: the one entry the ``for_*`` methods below spell out."""
        return dataclasses.replace(self, request=request)

    def for_create_or_overwrite(
        self,
        group: str | None = None,
        mode: Literal["w", "w-"] = "w-",
        encoding: Encoding | None = None,
    ) -> XarrayDatasetWriter:
        """Create the group (``"w-"``: it must not hold anything) or replace it (``"w"``)."""
        if mode not in ("w", "w-"):
            raise PlanError(f"mode={mode!r} is not 'w' or 'w-'; pass one of them", group=group)
        return self.for_request(
            WriteRequest(
                mode="overwrite" if mode == "w" else "create", group=group, encoding=encoding
            )
        )

    def for_modify(
        self,
        group: str | None = None,
        encoding: Encoding | None = None,
        update_spec: bool = False,
    ) -> XarrayDatasetWriter:
        """Add variables, overwrite existing ones and merge attributes.

        ``update_spec=True`` lets it change the structure the group's spec declares
        (dims, dtype, chunks, units, time encoding); the spec follows in the same commit.
        """
        return self.for_request(
            WriteRequest(mode="modify", group=group, encoding=encoding, update_spec=update_spec)
        )

    def drop_existing_vars(self) -> XarrayDatasetWriter:
        """After for_modify: write only the variables the group does not have yet."""
        if self.request is None or self.request.mode != "modify":
            raise PhaseOrderError("drop_existing_vars() follows for_modify(); call that first")
        return self.for_request(dataclasses.replace(self.request, only_new_vars=True))

    def for_append(
        self,
        group: str | None = None,
        append_dim: str = "time",
        on_overlap: OnOverlap = "error",
        update_attrs: Mapping[str, Any] | None = None,
        fill_missing: bool = False,
        on_gap: OnGap = "error",
    ) -> XarrayDatasetWriter:
        """Extend the arrays that have ``append_dim`` with the dataset's labels.

        ``on_gap``: labels that skip labels of the group's step are refused ("error"),
        appended only up to the first missing one ("stop"), or written with the missing
        ones as fill values, recorded as a gap ("fill"); see docs/spec.md.
        """
        return self.for_request(
            WriteRequest(
                mode="append",
                group=group,
                append_dim=append_dim,
                on_overlap=on_overlap,
                on_gap=on_gap,
                update_attrs=update_attrs,
                fill_missing=fill_missing,
            )
        )

    def for_region(
        self, group: str | None = None, region: RegionSpec = "auto"
    ) -> XarrayDatasetWriter:
        """Write values into a region of existing arrays (``"auto"``: placed by labels)."""
        return self.for_request(WriteRequest(mode="region", group=group, region=region))

    # -- phases ------------------------------------------------------------------------

    def plan(self) -> WritePlan:
        """Compare the dataset with the store and decide every step; writes nothing."""
        if self.request is None:
            raise PhaseOrderError(
                "choose a mode first: for_create_or_overwrite, for_modify, for_append or for_region"
            )
        if self._done:
            raise PhaseOrderError(
                f"plan() runs before any write; this writer already ran {', '.join(self._done)}"
            )
        self._planned = self._planner().plan()
        return self._planned.plan

    def write_metadata(self) -> None:
        """Delete replaced arrays, create new ones, resize appended ones, set attributes."""
        if self._planned is None:
            self.plan()
        self._run_phase("write_metadata", self._write_metadata)

    def write_eager(self) -> None:
        """Write every in-memory variable into its region."""
        self._run_phase("write_eager", self._write_eager)

    def verify(self) -> None:
        """Check the session against the plan; raises VerificationError listing every problem."""
        self._run_phase("verify", self._verify)

    def write_lazy(self) -> None:
        """Write the dask-backed variables on the current dask scheduler and merge the result.

        May be called again after it raised: each batch is merged only once it succeeded,
        and a batch written twice writes the same values.
        """
        self._run_phase("write_lazy", self._write_lazy)

    def _write_metadata(self) -> None:
        planned = self._require_plan()
        group, steps = self._group, planned.steps
        if steps.delete:
            zgroup = zarr.open_group(self.store, path=group or "", mode="r+")
            for name in steps.delete:
                del zgroup[name]
        if steps.template is not None:
            steps.template.to_zarr(
                self.store,
                group=group,
                mode=steps.create_mode,
                compute=False,
                encoding=steps.encoding,
                consolidated=False,
                zarr_format=3,
            )
        for name, shape in steps.resize.items():
            zarr.open_array(self.store, path=array_path(group, name), mode="r+").resize(shape)
        if steps.group_attrs:
            zarr.open_group(self.store, path=group or "", mode="r+").attrs.update(steps.group_attrs)
        for name, attrs in steps.array_attrs.items():
            zarr.open_array(self.store, path=array_path(group, name), mode="r+").attrs.update(attrs)
        if steps.spec is not None:
            # last: read from the arrays as they now are, and to_zarr replaced the group's
            # attributes with the template's
            write_spec(self.store, group, steps.spec.apply(StoredGroup(self.store, group)))
        log.info(
            "write_metadata: %d created, %d resized, %d deleted, %d attributes set",
            0 if steps.template is None else len(steps.template.variables),
            len(steps.resize),
            len(steps.delete),
            len(planned.plan.attrs_changed),
        )

    def _write_eager(self) -> None:
        writes = [w for w in self._require_plan().writes if not w.lazy]
        encodings = self._stored_encodings()
        for write in writes:
            target = zarr.open_array(
                self.store, path=array_path(self._group, write.name), mode="r+"
            )
            encoded = encode_for_store(write.variable, encodings[write.name], write.name)
            target[write.region] = np.asarray(encoded.values)
        log.info("write_eager: %d variables written", len(writes))

    def _verify(self) -> None:
        planned = self._require_plan()
        verify_store(self.store, planned, planned.dataset)

    def _write_lazy(self) -> None:
        batches = self.lazy_batches()
        if not batches:
            log.info("write_lazy: no dask-backed variables")
            return
        session = self.store.session
        for batch in batches:
            session.merge(write_batch(session.fork(), batch))
        log.info("write_lazy: %s", ", ".join(batch_summary(b) for b in batches))

    def write(self) -> WritePlan:
        """Every phase in order, in this writer's session; returns the plan it carried out."""
        plan = self.plan()
        self.write_metadata()
        self.write_eager()
        self.verify()
        self.write_lazy()
        return plan

    @property
    def written_dataset(self) -> xr.Dataset:
        """What the plan writes: the dataset, cut before a gap or with a gap's labels added
        when the append's ``on_gap`` says so (after plan())."""
        return self._require_plan().dataset

    def lazy_batches(self, dim: str | None = None, target_batches: int = 1) -> list[LazyBatch]:
        """The lazy writes as chunk-aligned windows along ``dim`` (default: the append dim).

        For callers that run the batches themselves (in parallel, persisted, resumable)
        with ``tasks.batches.write_batch`` on copies of a fork of this writer's store.
        """
        planned = self._require_plan()
        chunks = {a.name: a.chunks for a in planned.plan.arrays}
        dim = dim or planned.plan.append_dim or _first_dim(planned.writes)
        return split_into_batches(planned.writes, self._group, chunks, dim, target_batches)

    def on_store(
        self, store: icechunk.IcechunkStore, completed: Sequence[str] | None = None
    ) -> XarrayDatasetWriter:
        """This writer's plan, continuing in another store after the ``completed`` phases.

        The store must hold the result of exactly those phases of this plan (a copy of
        the fork they ran in, or that fork persisted and loaded again), so that a run
        resumed in a new process continues where the old one stopped.
        """
        self._require_plan()
        done = list(self._done if completed is None else completed)
        if done != list(PHASES[1 : len(done) + 1]):
            raise PhaseOrderError(
                f"completed phases {done} are not a prefix of {' → '.join(PHASES[1:])}"
            )
        clone = dataclasses.replace(self, store=store)
        clone._planned = self._planned
        clone._done = done
        return clone

    # -- internals ---------------------------------------------------------------------

    @property
    def _group(self) -> str | None:
        assert self.request is not None
        return self.request.group

    def _planner(self) -> CreatePlanner | ModifyPlanner | AppendPlanner | RegionPlanner:
        request = self.request
        assert request is not None
        stored = StoredGroup(self.store, request.group)
        if request.mode in ("create", "overwrite"):
            create_mode: Literal["w", "w-"] = "w" if request.mode == "overwrite" else "w-"
            return CreatePlanner(self.dataset, stored, create_mode, request.encoding)
        if request.mode == "modify":
            return ModifyPlanner(
                self.dataset,
                stored,
                request.encoding,
                request.only_new_vars,
                request.update_spec,
            )
        if request.mode == "append":
            assert request.append_dim is not None
            return AppendPlanner(
                self.dataset,
                stored,
                request.append_dim,
                request.on_overlap,
                request.update_attrs,
                request.fill_missing,
                request.on_gap,
            )
        assert request.region is not None
        return RegionPlanner(self.dataset, stored, request.region)

    def _require_plan(self) -> Planned:
        if self._planned is None:
            raise PhaseOrderError("call plan() (or write_metadata()) first")
        return self._planned

    def _run_phase(self, phase: str, body: Callable[[], None]) -> None:
        if self._broken:
            raise PhaseOrderError(
                f"{self._broken}() failed earlier and may have left the session half-written; "
                "discard the session (session.discard_changes()) and start a new writer"
            )
        expected = PHASES[PHASES.index(phase) - 1]
        previous = self._done[-1] if self._done else "plan"
        if previous != expected:
            raise PhaseOrderError(
                f"{phase}() must follow {expected}(); phases run in the order "
                f"{' → '.join(PHASES)} and this writer has run "
                f"{', '.join(self._done) if self._done else 'none yet'}"
            )
        try:
            body()
        except BaseException:
            # verify writes nothing and write_lazy merges only what succeeded: both may
            # run again; a failed metadata or eager write leaves partial changes behind
            if phase in ("write_metadata", "write_eager"):
                self._broken = phase
            raise
        self._done.append(phase)

    def _stored_encodings(self) -> dict[str, dict[str, Any]]:
        return stored_encodings(self.store, self._group)


def _first_dim(writes: list[ArrayWrite]) -> str | None:
    lazy = [w for w in writes if w.lazy and w.variable.ndim]
    return str(lazy[0].variable.dims[0]) if lazy else None


def batch_summary(batch: LazyBatch) -> str:
    window = f"{batch.dim}[{batch.start}:{batch.stop}]" if batch.dim else "whole arrays"
    return f"batch {batch.index} {window}: {len(batch.writes)} arrays, {batch.chunks} chunks"


def _as_dataset(obj: xr.DataArray) -> xr.Dataset:
    # the same names DataArray.to_zarr uses, so that xr.open_dataarray reads it back
    if obj.name is None:
        return obj.to_dataset(name="__xarray_dataarray_variable__")
    if obj.name in obj.coords or obj.name in obj.dims:
        ds = obj.to_dataset(name="__xarray_dataarray_variable__")
        ds.attrs["__xarray_dataarray_name__"] = obj.name
        return ds
    return obj.to_dataset()


def store_dask(
    session: icechunk.Session,
    *,
    sources: Sequence[da.Array],
    targets: Sequence[zarr.Array[Any]],
    regions: Sequence[Region | None] | None = None,
    align: bool = False,
    split_every: int | None = None,
) -> None:
    """Write dask arrays into zarr arrays of ``session`` and merge the workers' changes back.

    Runs on the current dask scheduler (threads, or a distributed client's workers).
    The targets are reopened on a fork of the session, so only the fork travels to the
    workers. Raises ChunkConflictError, before writing anything, if two dask blocks
    would write one zarr chunk; ``align=True`` rechunks the sources instead.
    """
    if len(sources) != len(targets):
        raise ValueError(f"store_dask got {len(sources)} sources but {len(targets)} targets")
    regions = list(regions) if regions is not None else [None] * len(sources)
    full_regions = [
        region if region is not None else full_region(target.shape)
        for region, target in zip(regions, targets, strict=True)
    ]
    aligned = []
    for source, target, region in zip(sources, targets, full_regions, strict=True):
        if source.ndim and (conflicts := shared_chunks(source.chunks, region, target.chunks)):
            if not align:
                first = conflicts[0]
                names = getattr(target.metadata, "dimension_names", None)  # zarr v3 only
                dim = (names or [None] * target.ndim)[first.dim_index]
                raise ChunkConflictError(
                    f"array {target.path!r}: dask blocks {first.block_indices[0]} and "
                    f"{first.block_indices[1]} along axis {first.dim_index}"
                    f"{f' ({dim!r})' if dim else ''} would both write zarr chunk "
                    f"{first.chunk_index} (zarr chunks {target.chunks}, dask chunks "
                    f"{tuple(map(tuple, source.chunks))}); {len(conflicts)} chunk(s) are shared. "
                    "Rechunk the source to the zarr chunks or pass align=True"
                )
            source = align_to_zarr_chunks(source, region, target.chunks)
        aligned.append(source)
    fork = session.fork()
    fork_targets = [zarr.open_array(fork.store, path=t.path, mode="r+") for t in targets]
    merged = icechunk.dask.store_dask(
        sources=aligned, targets=fork_targets, regions=full_regions, split_every=split_every
    )
    session.merge(merged)


def to_icechunk(
    obj: xr.Dataset | xr.DataArray,
    session: icechunk.Session,
    *,
    group: str | None = None,
    mode: Literal["w", "w-", "a", "r+"] | None = None,
    append_dim: Hashable | None = None,
    region: RegionSpec | None = None,
    encoding: Encoding | None = None,
    chunkmanager_store_kwargs: MutableMapping[Any, Any] | None = None,
) -> WritePlan:
    """Write ``obj`` in one call, like ``Dataset.to_zarr``; the caller commits the session.

    ``mode`` defaults as in xarray: "a" with append_dim, "r+" with region, else "w-".
    "a" without append_dim modifies the group (adds and overwrites variables).
    """
    del chunkmanager_store_kwargs  # accepted for signature compatibility with icechunk's
    if mode is None:
        mode = "a" if append_dim is not None else "r+" if region is not None else "w-"
    writer = XarrayDatasetWriter(obj, store=session.store)  # type: ignore[arg-type]
    if append_dim is not None:
        if region is not None:
            raise PlanError(
                "append_dim and region were both given; append first, then write regions",
                group=group,
            )
        writer = writer.for_append(group=group, append_dim=str(append_dim))
    elif region is not None or mode == "r+":
        writer = writer.for_region(group=group, region=region or "auto")
    elif mode == "a":
        writer = writer.for_modify(group=group, encoding=encoding)
    else:
        writer = writer.for_create_or_overwrite(group=group, mode=mode, encoding=encoding)
    return writer.write()
