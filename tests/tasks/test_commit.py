"""Concurrent commits: disjoint regions both land; overlapping ones fail naming the chunks."""

from __future__ import annotations

import pytest
import xarray as xr

from tasks.commit import commit_session
from tasks.errors import CommitConflictError
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset
from tests.conftest import read_back, tip
from tests.tasks.helpers import chunked_group, constant_patch, write


def _region_session(repo, patch):
    """A session holding a region write, not yet committed."""
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(patch, store=session.store).for_region(group="g")
    writer.plan()
    writer.write_metadata()
    writer.write_eager()
    writer.verify()
    writer.write_lazy()
    return session


@pytest.fixture
def stored(repo):
    return chunked_group(repo)


def test_disjoint_regions_started_together_both_land(repo, stored):
    first = _region_session(repo, constant_patch(stored, 0, 4, 1.0))
    second = _region_session(repo, constant_patch(stored, 8, 12, 2.0))
    commit_session(first, "first")
    commit_session(second, "second")
    back = read_back(repo, "g").tas
    assert (back[0:4] == 1.0).all()
    assert (back[8:12] == 2.0).all()
    xr.testing.assert_equal(back[4:8], stored.tas[4:8])


def test_overlapping_regions_fail_naming_the_chunks(repo, stored):
    first = _region_session(repo, constant_patch(stored, 0, 6, 1.0))
    second = _region_session(repo, constant_patch(stored, 4, 8, 2.0))
    commit_session(first, "first")
    landed = tip(repo)
    with pytest.raises(CommitConflictError, match=r"g/tas.*chunks") as info:
        commit_session(second, "second")
    assert info.value.overlapping
    assert tip(repo) == landed
    assert (read_back(repo, "g").tas[0:6] == 1.0).all()


def test_a_region_behind_an_append_conflicts_without_overlapping(repo, stored):
    region = _region_session(repo, constant_patch(stored, 0, 4, 1.0))
    write(repo, cf_dataset(16).isel(time=slice(12, 16)), lambda w: w.for_append(group="g"))
    with pytest.raises(CommitConflictError) as info:
        commit_session(region, "region planned before the append")
    assert not info.value.overlapping  # starting over from the new tip can succeed
