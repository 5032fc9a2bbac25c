"""Raw dask arrays into zarr arrays: refused when two blocks share a chunk, unless aligned."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from tasks.errors import ChunkConflictError
from tasks.writer import store_dask
from tests.conftest import tip

pytestmark = pytest.mark.usefixtures("scheduler")


def _target(repo, chunks=(4, 5)):
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.create_array("field", shape=(12, 10), chunks=chunks, dtype="float64", fill_value=np.nan)
    session.commit("empty array")
    session = repo.writable_session("main")
    return session, zarr.open_array(session.store, path="field", mode="r+")


def test_aligned_blocks_are_written_and_merged(repo):
    session, target = _target(repo)
    values = np.arange(120.0).reshape(12, 10)
    store_dask(session, sources=[da.from_array(values, chunks=(8, 5))], targets=[target])
    session.commit("written")
    back = zarr.open_array(repo.readonly_session("main").store, path="field", mode="r")
    np.testing.assert_array_equal(back[:], values)


def test_shared_chunks_raise_before_writing(repo):
    session, target = _target(repo)
    before = tip(repo)
    source = da.from_array(np.ones((12, 10)), chunks=(6, 5))
    with pytest.raises(ChunkConflictError, match=r"'field'.*zarr chunk 1.*align=True"):
        store_dask(session, sources=[source], targets=[target])
    assert not session.has_uncommitted_changes
    assert tip(repo) == before


def test_align_rechunks_instead_and_regions_keep_the_rest(repo):
    session, target = _target(repo)
    source = da.from_array(np.full((7, 10), 2.0), chunks=(3, 10))
    store_dask(
        session,
        sources=[source],
        targets=[target],
        regions=[(slice(3, 10), slice(0, 10))],
        align=True,
    )
    session.commit("region")
    back = zarr.open_array(repo.readonly_session("main").store, path="field", mode="r")[:]
    assert np.isnan(back[:3]).all()
    assert (back[3:10] == 2.0).all()
    assert np.isnan(back[10:]).all()
