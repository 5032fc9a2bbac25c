"""Which zarr chunks a write touches, and dask chunkings in which no two tasks share one.

A zarr chunk written by two dask tasks is a race: each task reads the chunk, fills its
part and writes it back, and in icechunk each task writes into its own fork, so the
merge keeps whichever fork came last. Every lazy write is therefore laid out so that
each zarr chunk it touches belongs to exactly one dask block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da

Region = tuple[slice, ...]


@dataclass(frozen=True)
class SharedChunk:
    """A zarr chunk that more than one dask block would write."""

    dim_index: int
    chunk_index: int
    block_indices: tuple[int, int]


def full_region(shape: Sequence[int]) -> Region:
    return tuple(slice(0, n) for n in shape)


def region_bounds(region: Region, shape: Sequence[int]) -> list[tuple[int, int]]:
    return [sl.indices(n)[:2] for sl, n in zip(region, shape, strict=True)]


def chunks_touched(region: Region, array_shape: Sequence[int], zarr_chunks: Sequence[int]) -> int:
    """How many zarr chunks a write of ``region`` into an array touches."""
    total = 1
    for (start, stop), size in zip(region_bounds(region, array_shape), zarr_chunks, strict=True):
        if stop <= start:
            return 0
        total *= (stop - 1) // size - start // size + 1
    return total


def shared_chunks(
    block_chunks: Sequence[Sequence[int]], region: Region, zarr_chunks: Sequence[int]
) -> list[SharedChunk]:
    """Zarr chunks that two neighbouring dask blocks would both write.

    ``block_chunks`` is a dask ``.chunks`` tuple; the blocks are placed at the region's
    start, so the check is in the array's own coordinates.
    """
    conflicts = []
    for dim_index, (sizes, sl, zsize) in enumerate(
        zip(block_chunks, region, zarr_chunks, strict=True)
    ):
        position = sl.start or 0
        for block_index, size in enumerate(sizes[:-1]):
            position += size
            if position % zsize:
                conflicts.append(
                    SharedChunk(dim_index, position // zsize, (block_index, block_index + 1))
                )
    return conflicts


def aligned_chunks(length: int, start: int, zarr_chunk: int, preferred: int) -> tuple[int, ...]:
    """Dask chunk sizes along one dimension whose boundaries fall on zarr chunk boundaries.

    Each block covers whole zarr chunks (the first and last may be partial because the
    region starts or ends inside one) and about ``preferred`` elements, so an aligned
    array keeps roughly the memory footprint the user chose.
    """
    if length == 0:
        return (0,)
    per_block = max(1, math.ceil(preferred / zarr_chunk)) * zarr_chunk
    sizes = []
    position, stop = start, start + length
    while position < stop:
        # the first block ends on a chunk boundary, so that every later one starts on one
        block_end = min(stop, (position // per_block + 1) * per_block)
        if block_end <= position:
            block_end = min(stop, position + per_block)
        sizes.append(block_end - position)
        position = block_end
    return tuple(sizes)


def align_to_zarr_chunks(array: da.Array, region: Region, zarr_chunks: Sequence[int]) -> da.Array:
    """Rechunk ``array`` so that no zarr chunk of ``region`` is shared by two blocks.

    Dimensions that are already aligned keep their chunks, so an aligned source is
    returned unchanged (no extra tasks in the graph).
    """
    target = []
    for sizes, sl, zsize in zip(array.chunks, region, zarr_chunks, strict=True):
        start = sl.start or 0
        if shared_chunks([sizes], (sl,), [zsize]):
            target.append(aligned_chunks(sum(sizes), start, zsize, max(sizes)))
        else:
            target.append(tuple(sizes))
    target_chunks = tuple(target)
    if target_chunks == array.chunks:
        return array
    rechunked: da.Array = array.rechunk(target_chunks)
    return rechunked


def default_zarr_chunks(
    shape: Sequence[int], dask_chunks: Sequence[Sequence[int]] | None
) -> tuple[int, ...]:
    """The chunks xarray gives a new array: the first dask block, or the whole array."""
    if dask_chunks is None:
        return tuple(max(1, n) for n in shape)
    return tuple(max(1, c[0]) for c in dask_chunks)
