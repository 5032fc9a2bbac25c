"""icefloe as it was before the improvements measured in RESULTS.md, to measure both in one run.

1. Progress: after each dask computation of a lazy write on a distributed cluster,
   ``tasks.progress._DistributedCountingGet`` waited for the scheduler's progress feed to
   report the end — which it does only at its next 250 ms tick — before returning. Now the
   computation is counted complete as soon as its results are gathered, and the feed's
   listener ends in the background.
2. Stored encodings: ``tasks.batches.stored_encodings`` (and verify's check of eager values)
   opened the group with xarray's default indexes, reading every chunk of the time
   coordinate, three times per append. Now they open it without indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from distributed.client import futures_of

import tasks.progress


class BlockingCountingGet(tasks.progress._DistributedCountingGet):
    """The counting scheduler function of commit 9888287: waits for the feed's last tick."""

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        client = self._client
        packed = client.get(dsk, keys, sync=False, **kwargs)
        futures = futures_of(packed)
        listener = asyncio.run_coroutine_threadsafe(
            tasks.progress._SchedulerFeed(futures, client, self._count).listen(),
            client.loop.asyncio_loop,
        )
        try:
            return client.gather(packed)
        finally:
            tasks.progress._wait_for_listener(listener)
            for future in futures:
                future.release()
            self._count.close_computation()


@contextlib.contextmanager
def progress_before() -> Iterator[None]:
    """Within the block, lazy writes count progress the way they did before."""
    current = tasks.progress._DistributedCountingGet
    tasks.progress._DistributedCountingGet = BlockingCountingGet  # type: ignore[misc]
    try:
        yield
    finally:
        tasks.progress._DistributedCountingGet = current  # type: ignore[misc]


def stored_encodings_with_indexes(store: Any, group: str | None) -> dict[str, dict[str, Any]]:
    """``tasks.batches.stored_encodings`` of commit 9888287: builds every default index."""
    import xarray as xr

    stored = xr.open_zarr(store, group=group, consolidated=False, chunks=None, zarr_format=3)
    return {str(name): dict(var.encoding) for name, var in stored.variables.items()}


@contextlib.contextmanager
def encodings_before() -> Iterator[None]:
    """Within the block, the writer reads stored encodings the way it did before (the eager
    phase, each lazy batch and verify's check of the eager values each building every
    default index of the group, i.e. reading every chunk of the time coordinate)."""
    import tasks.batches
    import tasks.verify
    import tasks.writer

    modules = (tasks.batches, tasks.writer, tasks.verify)
    saved = [m.stored_encodings for m in modules]
    for module in modules:
        module.stored_encodings = stored_encodings_with_indexes  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.stored_encodings = original  # type: ignore[attr-defined]
