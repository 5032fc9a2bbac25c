"""verify() compares the session with the plan and lists every difference."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tasks.errors import VerificationError
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset
from tests.conftest import tip


@pytest.fixture
def written(repo):
    """A session after write_metadata and write_eager, not committed, and its writer."""
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(cf_dataset(4), store=session.store).for_create_or_overwrite(
        group="g"
    )
    writer.write_metadata()
    writer.write_eager()
    return session, writer


def test_verify_lists_every_difference_and_nothing_is_committed(repo, written):
    before = tip(repo)
    session, writer = written
    # what a buggy writer or a concurrent hand could have done to the session
    del zarr.open_group(session.store, path="g", mode="r+").attrs["title"]
    zarr.open_array(session.store, path="g/lat", mode="r+").attrs["units"] = "radians"
    with pytest.raises(VerificationError) as info:
        writer.verify()
    assert "group attributes ['title']" in str(info.value)
    assert "'lat' lacks the planned attributes ['units']" in str(info.value)
    assert tip(repo) == before


def test_verify_checks_eager_values(written):
    session, writer = written
    zarr.open_array(session.store, path="g/tas", mode="r+")[0, 0, 0] = np.float32(-1)
    with pytest.raises(VerificationError, match="'tas' reads back different values"):
        writer.verify()
