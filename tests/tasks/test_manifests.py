"""Manifest splitting is recorded in the repository and every later commit keeps it."""

from __future__ import annotations

from pathlib import Path

import icechunk
import numpy as np
import zarr

from tasks.manifests import (
    group_arrays_pattern,
    record_split_rule,
    recorded_rules,
    split_size_for,
    with_split_rule,
)


def _repo(path: Path) -> icechunk.Repository:
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))


def _reopened(path: Path) -> icechunk.Repository:
    # a fresh opener with no configuration of its own: what any other client sees
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _make(repo: icechunk.Repository, group: str | None, steps: int = 20) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, path=group or "", mode="a")
    # 2 x 2 chunks per time step; x alone has no time dimension
    air = root.create_array(
        "air", shape=(steps, 4, 4), chunks=(1, 2, 2), dtype="f4", dimension_names=("time", "y", "x")
    )
    air[:] = np.arange(steps * 16, dtype="f4").reshape(steps, 4, 4)
    x = root.create_array("x", shape=(4,), chunks=(4,), dtype="i4", dimension_names=("x",))
    x[:] = np.arange(4)
    session.commit("create")


def _append(repo: icechunk.Repository, group: str | None, steps: int) -> str:
    session = repo.writable_session("main")
    air = zarr.open_array(session.store, path=f"{group}/air" if group else "air")
    n = air.shape[0]
    air.resize((n + steps, 4, 4))
    air[n:] = np.full((steps, 4, 4), 7, dtype="f4")
    return session.commit("append")


def _split(
    repo: icechunk.Repository, group: str | None, dim: str, size: int | None = None
) -> icechunk.Repository:
    """The rule in force, and recorded, as a run that appends does once it committed."""
    repo, rule = with_split_rule(repo, group, dim, size)
    if rule is not None:
        record_split_rule(repo, rule)
    return repo


def _manifests(repo: icechunk.Repository) -> list[int]:
    return sorted(m.num_chunk_refs for m in repo.list_manifest_files(repo.lookup_branch("main")))


def test_the_recorded_rule_splits_every_later_commit_of_any_opener(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    _make(repo, "g")

    split = _split(repo, "g", "time", 5)
    _append(split, "g", 1)

    # 21 steps of 4 chunks, 5 steps a manifest: 4 full manifests and one of the last step;
    # x (no time dimension) keeps its own
    assert _manifests(split) == [1, 4, 20, 20, 20, 20]
    rules = list(recorded_rules(icechunk.Repository.fetch_config(repo.storage)))
    assert rules == [(group_arrays_pattern("g"), "^time$", 5)]

    # a client that opens the repository without any configuration splits the same way
    other = _reopened(tmp_path / "r")
    _append(other, "g", 4)
    assert _manifests(other) == [1, 20, 20, 20, 20, 20]
    np.testing.assert_array_equal(
        zarr.open_array(other.readonly_session("main").store, path="g/air")[20:], 7
    )


def test_an_existing_rule_is_kept_unless_a_size_is_given(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    _make(repo, "g")
    _make(repo, None)
    first = _split(repo, "g", "time", 5)
    _split(first, None, "time", 3)

    # no size: the recorded one stays, the repository object is reused
    again = _split(_reopened(tmp_path / "r"), "g", "time")
    assert list(recorded_rules(again.config)) == [
        (group_arrays_pattern("g"), "^time$", 5),
        (group_arrays_pattern(None), "^time$", 3),
    ]

    # an explicit size replaces the group's rule and keeps the root group's
    _split(again, "g", "time", 10)
    assert list(recorded_rules(icechunk.Repository.fetch_config(repo.storage))) == [
        (group_arrays_pattern(None), "^time$", 3),
        (group_arrays_pattern("g"), "^time$", 10),
    ]

    # 0: one manifest per array, recorded so that a default run does not split it again
    never = _split(_reopened(tmp_path / "r"), "g", "time", 0)
    _append(never, "g", 1)
    # g/air in one manifest of 21 steps; the root group's air (untouched since) in its own
    assert [m for m in _manifests(never) if m > 1] == [20 * 4, 21 * 4]
    kept = _split(_reopened(tmp_path / "r"), "g", "time")
    assert (group_arrays_pattern("g"), "", 0) in list(recorded_rules(kept.config))


def test_without_a_size_a_manifest_holds_about_ten_thousand_references(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    _make(repo, "g")
    assert split_size_for(repo.readonly_session("main"), "g", "time") == 10_000 // 4
    # the persisted configuration holds the rule, not this process's other settings
    tuned = repo.reopen(
        config=icechunk.RepositoryConfig(
            manifest=icechunk.ManifestConfig(max_concurrent_manifest_fetches_during_commit=9),
            storage=icechunk.StorageSettings(retries=icechunk.StorageRetriesSettings(max_tries=1)),
        )
    )
    _split(tuned, "g", "time")
    persisted = icechunk.Repository.fetch_config(repo.storage)
    assert persisted is not None
    assert persisted.manifest is not None
    assert persisted.manifest.max_concurrent_manifest_fetches_during_commit is None
    assert list(recorded_rules(persisted)) == [(group_arrays_pattern("g"), "^time$", 2500)]


def test_a_rule_is_in_force_before_it_is_recorded_and_only_recording_writes(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "r")
    _make(repo, "g")
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))

    split, rule = with_split_rule(repo, "g", "time", 5)

    # nothing written: a run refused after this leaves the repository as it was
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before
    assert icechunk.Repository.fetch_config(repo.storage) is None
    assert rule is not None
    _append(split, "g", 1)  # this process commits with the rule already
    assert [m for m in _manifests(split) if m > 1] == [4, 20, 20, 20, 20]
    record_split_rule(split, rule)
    assert list(recorded_rules(icechunk.Repository.fetch_config(repo.storage))) == [
        (group_arrays_pattern("g"), "^time$", 5)
    ]
    assert with_split_rule(split, "g", "time") == (split, None)
