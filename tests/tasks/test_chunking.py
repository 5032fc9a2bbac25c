"""Chunk arithmetic: counts, shared chunks, and alignment that keeps aligned sources as they are."""

from __future__ import annotations

import dask.array as da
import numpy as np

from tasks.chunking import align_to_zarr_chunks, aligned_chunks, chunks_touched, shared_chunks


def test_chunks_touched_counts_partial_chunks():
    assert chunks_touched((slice(3, 13),), (20,), (5,)) == 3
    assert chunks_touched((slice(5, 10), slice(0, 4)), (20, 4), (5, 2)) == 2
    assert chunks_touched((slice(4, 4),), (20,), (5,)) == 0


def test_shared_chunks_are_found_in_array_coordinates():
    assert shared_chunks([(5, 5)], (slice(0, 10),), (5,)) == []
    conflict = shared_chunks([(3, 7)], (slice(3, 13),), (5,))
    assert [(c.dim_index, c.chunk_index) for c in conflict] == [(0, 1)]


def test_aligned_chunks_end_on_zarr_boundaries():
    sizes = aligned_chunks(10, 3, 5, 2)
    edges = np.cumsum((3, *sizes))[1:-1]
    assert sum(sizes) == 10
    assert all(edge % 5 == 0 for edge in edges)


def test_align_keeps_an_aligned_array_and_fixes_a_misaligned_one():
    aligned = da.zeros((10, 4), chunks=(5, 4))
    assert align_to_zarr_chunks(aligned, (slice(0, 10), slice(0, 4)), (5, 4)) is aligned
    fixed = align_to_zarr_chunks(
        da.zeros((10, 4), chunks=(3, 4)), (slice(0, 10), slice(0, 4)), (5, 4)
    )
    assert shared_chunks(fixed.chunks, (slice(0, 10), slice(0, 4)), (5, 4)) == []
