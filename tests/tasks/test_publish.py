"""A run prepared in a fork, written in batches, published with one commit — even after the branch moved."""

from __future__ import annotations

import pickle

import pytest
import xarray as xr

from tasks.batches import write_batch
from tasks.errors import CommitConflictError, VerificationError
from tasks.publish import publish
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import plain_xarray, read_back, tip
from tests.tasks.helpers import chunked_group, constant_patch, write


def prepare(repo, ds, choose, batches=3):
    """Metadata and eager values in a fork of the tip; the lazy part as batch forks."""
    base = tip(repo)
    fork = repo.writable_session("main").fork()
    writer = choose(XarrayDatasetWriter(ds, store=fork.store))
    writer.plan()
    writer.write_metadata()
    writer.write_eager()
    writer.verify()
    results = [write_batch(fork, batch) for batch in writer.lazy_batches(target_batches=batches)]
    return base, [fork, *results]


@pytest.mark.usefixtures("scheduler")
def test_batches_in_fork_copies_merge_into_one_commit(repo, tmp_path):
    ds = lazy(cf_dataset(12), time_chunk=2)
    base, changes = prepare(repo, ds, lambda w: w.for_create_or_overwrite(group="g"), batches=4)
    assert len(changes) == 1 + 3  # 12 labels in chunks of 2: windows of 4 labels
    snapshot = publish(repo, "main", base, changes, "batched create")
    assert tip(repo) == snapshot
    assert len(list(repo.ancestry(branch="main"))) == 2
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(ds, tmp_path))


def test_publish_rebases_onto_a_branch_that_moved(repo):
    ds = chunked_group(repo)
    base, changes = prepare(repo, constant_patch(ds, 0, 4, 1.0), lambda w: w.for_region(group="g"))
    write(repo, constant_patch(ds, 8, 12, 2.0), lambda w: w.for_region(group="g"))
    publish(repo, "main", base, changes, "late region")
    back = read_back(repo, "g").tas
    assert (back[0:4] == 1.0).all()
    assert (back[8:12] == 2.0).all()
    assert repo.list_branches() == {"main"}


def test_publish_refuses_overlap_with_what_landed_meanwhile(repo):
    ds = chunked_group(repo)
    base, changes = prepare(repo, constant_patch(ds, 0, 8, 1.0), lambda w: w.for_region(group="g"))
    write(repo, constant_patch(ds, 4, 8, 2.0), lambda w: w.for_region(group="g"))
    landed = tip(repo)
    with pytest.raises(CommitConflictError, match="g/tas"):
        publish(repo, "main", base, changes, "overlapping")
    assert tip(repo) == landed
    assert (read_back(repo, "g").tas[4:8] == 2.0).all()


def test_staged_publish_keeps_a_failed_audit_on_its_branch(repo):
    ds = chunked_group(repo)
    before = tip(repo)
    base, changes = prepare(
        repo, constant_patch(ds, 0, 4, -999.0), lambda w: w.for_region(group="g")
    )

    def audit(snapshot: str) -> None:
        staged = xr.open_zarr(
            repo.readonly_session(snapshot_id=snapshot).store, group="g", consolidated=False
        )
        if (staged.tas < -100).any():
            raise VerificationError(["tas below -100 K"], group="g")

    with pytest.raises(VerificationError, match="kept on branch 'icefloe/run-1'"):
        publish(repo, "main", base, changes, "staged", staging_branch="icefloe/run-1", audit=audit)
    assert tip(repo) == before
    assert "icefloe/run-1" in repo.list_branches()


def test_staged_publish_moves_the_target_and_removes_the_staging_branch(repo):
    ds = chunked_group(repo)
    base, changes = prepare(repo, constant_patch(ds, 0, 4, 5.0), lambda w: w.for_region(group="g"))
    snapshot = publish(
        repo, "main", base, changes, "staged", staging_branch="icefloe/run-2", audit=lambda s: None
    )
    assert tip(repo) == snapshot
    assert repo.list_branches() == {"main"}
    assert (read_back(repo, "g").tas[0:4] == 5.0).all()


def test_a_run_resumes_from_its_persisted_fork_in_a_new_writer(repo, tmp_path):
    full = lazy(cf_dataset(10), time_chunk=2)
    write(repo, full.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite(group="g"))
    later = full.isel(time=slice(4, 10))
    base = tip(repo)
    fork = repo.writable_session("main").fork()
    first = XarrayDatasetWriter(later, store=fork.store).for_append(group="g")
    first.plan()
    first.write_metadata()
    first.write_eager()
    saved_fork = pickle.dumps(fork)
    saved_batch = pickle.dumps(write_batch(fork, first.lazy_batches(target_batches=3)[0]))
    # the process died here; a new one plans the same request against the same base
    fork = pickle.loads(saved_fork)
    planner = XarrayDatasetWriter(later, store=repo.readonly_session(snapshot_id=base).store)
    planner = planner.for_append(group="g")
    planner.plan()
    resumed = planner.on_store(fork.store, completed=["write_metadata", "write_eager"])
    resumed.verify()
    remaining = [write_batch(fork, b) for b in resumed.lazy_batches(target_batches=3)[1:]]
    publish(repo, "main", base, [pickle.loads(saved_batch), *remaining], "resumed append")
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(full, tmp_path))
