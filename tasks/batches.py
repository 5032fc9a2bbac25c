"""The lazy write split into batches that can run, fail and be resumed one by one.

A batch is a window along one dimension (usually time) whose edges fall on the zarr
chunk boundaries of every array it writes, so no chunk belongs to two batches. Each
batch is written into its own copy of the run's fork and returns the changes as a
ForkSession: a few KB that can be persisted, sent between processes and merged.

A batch can be started ahead (``StartedBatch``): its dask graph is built and submitted from
a thread of its own while the batch before it is still computing, so that the cluster never
waits at a batch boundary (the tail of one batch, the gathering and merging of its forks, and
the building of the next graph all overlap with work). ``write_batch`` then takes its result.

A batch fork must be merged only into a session that descends from the very fork it
was copied from. Merged into a session whose arrays were re-created (even
identically), icechunk keeps the new, empty arrays and drops the batch's chunks
without an error; the run therefore persists its prepared fork and reuses it on
resume rather than preparing again.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import math
import pickle
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import icechunk.dask
import zarr

from tasks.encoding import encode_for_store
from tasks.plan import ArrayWrite
from tasks.stored import array_path, stored_encodings

if TYPE_CHECKING:
    from icechunk.session import ForkSession

    from tasks.chunking import Region


@dataclass(frozen=True)
class LazyBatch:
    """The dask writes of one window ``[start, stop)`` along ``dim``."""

    index: int
    group: str | None
    dim: str | None
    start: int
    stop: int
    writes: tuple[ArrayWrite, ...]
    chunks: int


def split_into_batches(
    writes: list[ArrayWrite],
    group: str | None,
    chunks_of: dict[str, tuple[int, ...]],
    dim: str | None,
    target_batches: int = 1,
) -> list[LazyBatch]:
    """Cut the lazy writes into about ``target_batches`` chunk-aligned windows along ``dim``."""
    lazy = [w for w in writes if w.lazy]
    if not lazy:
        return []
    along = [w for w in lazy if dim is not None and dim in w.variable.dims]
    whole = [w for w in lazy if w not in along]
    if not along or target_batches <= 1:
        return [_batch(0, group, None, 0, 0, lazy, chunks_of)]
    assert dim is not None
    axis_of = {w.name: w.variable.dims.index(dim) for w in along}
    step_unit = math.lcm(*(chunks_of[w.name][axis_of[w.name]] for w in along))
    lo = min(w.region[axis_of[w.name]].start for w in along)
    hi = max(w.region[axis_of[w.name]].stop for w in along)
    step = max(1, math.ceil((hi - lo) / target_batches / step_unit)) * step_unit
    batches: list[LazyBatch] = []
    edge = (lo // step) * step
    while edge < hi:
        window = (max(edge, lo), min(edge + step, hi))
        pieces = [p for w in along if (p := _clip(w, axis_of[w.name], *window)) is not None]
        if not batches:
            pieces += whole  # arrays without the batch dimension go with the first batch
        batches.append(_batch(len(batches), group, dim, *window, pieces, chunks_of))
        edge += step
    return batches


def _clip(write: ArrayWrite, axis: int, start: int, stop: int) -> ArrayWrite | None:
    region = write.region[axis]
    lo, hi = max(region.start, start), min(region.stop, stop)
    if lo >= hi:
        return None
    dim = write.variable.dims[axis]
    piece = write.variable.isel({dim: slice(lo - region.start, hi - region.start)})
    new_region: Region = tuple(
        slice(lo, hi) if i == axis else s for i, s in enumerate(write.region)
    )
    return ArrayWrite(write.name, piece, new_region, lazy=True)


def _batch(
    index: int,
    group: str | None,
    dim: str | None,
    start: int,
    stop: int,
    writes: list[ArrayWrite],
    chunks_of: dict[str, tuple[int, ...]],
) -> LazyBatch:
    from tasks.chunking import chunks_touched

    n_chunks = sum(
        chunks_touched(w.region, [s.stop for s in w.region], chunks_of[w.name]) for w in writes
    )
    return LazyBatch(index, group, dim, start, stop, tuple(writes), n_chunks)


def write_batch(
    fork: ForkSession,
    batch: LazyBatch,
    split_every: int | None = None,
    started: StartedBatch | None = None,
) -> ForkSession:
    """Write one batch into a copy of ``fork`` on the current dask scheduler.

    Returns the merged changes of the dask workers, which include the fork's own
    (metadata and eager values), so any set of batch results merges into one session.
    ``started``: the same batch started ahead from the same fork; its result is returned
    (or its error raised) instead of writing the batch again.
    """
    if started is not None:
        if _window(started.batch) != _window(batch):
            raise ValueError(f"batch {started.batch.index} was started ahead, not {batch.index}")
        return started.result()
    return _write_into(_copy(fork), batch, split_every)


def _copy(fork: ForkSession) -> ForkSession:
    copy: ForkSession = pickle.loads(pickle.dumps(fork))
    return copy


def _write_into(
    copy: ForkSession,
    batch: LazyBatch,
    split_every: int | None,
    cancelled: threading.Event | None = None,
) -> ForkSession:
    if not batch.writes:
        return copy
    encodings = stored_encodings(copy.store, batch.group)
    sources = [_lazy_encoded(w, encodings[w.name]) for w in batch.writes]
    targets = [
        zarr.open_array(copy.store, path=array_path(batch.group, w.name), mode="r+")
        for w in batch.writes
    ]
    if cancelled is not None and cancelled.is_set():
        raise CancelledBatchError(f"batch {batch.index} was dropped before it computed")
    return icechunk.dask.store_dask(
        sources=sources,
        targets=targets,
        regions=[w.region for w in batch.writes],
        split_every=split_every,
    )


class CancelledBatchError(RuntimeError):
    """A batch started ahead was dropped before its computation began."""


def _window(batch: LazyBatch) -> tuple[int, str | None, int, int]:
    return batch.index, batch.dim, batch.start, batch.stop


class StartedBatch:
    """One batch writing in a thread of its own, started ahead of its turn.

    The thread runs in a copy of the starting thread's context, so its computation goes to
    the same dask scheduler (``tasks.progress.counting_scheduler`` routes by context). Its
    result is taken once, by ``write_batch``; a batch nobody takes is simply dropped (its
    chunks are never merged into anything, so they are never published).
    """

    def __init__(self, fork: ForkSession, batch: LazyBatch, split_every: int | None = None):
        self.batch = batch
        self._cancelled = threading.Event()
        self._future: concurrent.futures.Future[ForkSession] = concurrent.futures.Future()
        # copied here, in the caller's thread: the fork is the workspace every batch copies,
        # and the caller may be copying it for its own batch at the same moment
        copy = _copy(fork)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._run, copy, split_every),
            name=f"icefloe-batch-{batch.index}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, copy: ForkSession, split_every: int | None) -> None:
        try:
            result = _write_into(copy, self.batch, split_every, self._cancelled)
        except BaseException as err:  # handed to whoever takes the result
            self._future.set_exception(err)
        else:
            self._future.set_result(result)

    def cancel(self) -> None:
        """Nobody will take the result: do not start computing (a computation already
        running finishes on its own, and its result is dropped)."""
        self._cancelled.set()

    def result(self, timeout: float | None = None) -> ForkSession:
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()


def _lazy_encoded(write: ArrayWrite, encoding: dict[str, Any]) -> da.Array:
    """The encoded values of a lazy write, still as dask blocks on the zarr chunk grid.

    xarray computes object arrays while encoding them (strings, cftime dates with a
    missing value): the result is wrapped again in the variable's own (aligned) chunks.
    """
    encoded = encode_for_store(write.variable, encoding, write.name).data
    if isinstance(encoded, da.Array):
        return encoded
    wrapped: da.Array = da.from_array(encoded, chunks=write.variable.chunks or -1)
    return wrapped
