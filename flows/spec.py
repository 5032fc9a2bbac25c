"""A group's declared spec from Python and the CLI: show it, declare it, compare with it.

    show_spec(target, group)                    the stored spec (None: the group has none)
    init_spec(target, group, spec=None, ...)    store one, inferred from the stored arrays
                                                or given (YAML): one commit carrying the
                                                icefloe metadata block
    diff_spec(target, group, spec= | source= | dataset=)
                                                what a YAML spec, a source or a dataset
                                                changes

The spec itself, the guards it drives and the late-data policy: tasks/spec.py,
tasks/planners/guards.py and docs/spec.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import icechunk
import pandas as pd
import xarray as xr

from flows.credentials import load_credentials
from flows.locks import serialized
from flows.metadata import current_run, package_version
from flows.sources import SourceModel, parse_source
from flows.targets import Target, safe_url
from flows.write import open_source
from tasks.commit import commit_lock, commit_session
from tasks.coverage import RECORD_KEY, CoverageChange, coverage_record
from tasks.errors import GroupNotFoundError, PlanError, TargetError, TargetNotFoundError
from tasks.planners.guards import parse_label
from tasks.spec import DatasetSpec, label_grid, label_text, labels_in, write_spec
from tasks.stored import StoredGroup, normalize_group

__all__ = ["diff_spec", "init_spec", "show_spec", "stored_structure"]


def show_spec(target: Target, group: str | None = None) -> DatasetSpec | None:
    """The spec stored with ``group`` on the target's branch; None for a group written
    before specs existed (``init_spec`` adds one)."""
    stored = _stored(_open(target), target, normalize_group(group))
    return stored.spec


def stored_structure(
    target: Target, group: str | None = None, append_dim: str | None = None
) -> DatasetSpec:
    """The spec inferred from what the group holds now (labels read from its coordinate)."""
    group = normalize_group(group)
    stored = _stored(_open(target), target, group)
    _require_arrays(stored, target, group)
    spec = stored.spec
    return DatasetSpec.from_group(stored, append_dim or (spec.append_dim if spec else None))


def init_spec(
    target: Target,
    group: str | None = None,
    spec: DatasetSpec | str | None = None,
    *,
    append_dim: str | None = None,
    force: bool = False,
) -> tuple[DatasetSpec, str]:
    """Store a spec with ``group`` in one commit; returns it and the snapshot id.

    Without ``spec``, it is inferred from the group's arrays (``append_dim``: the dimension
    appends extend, guessed when not given). A given spec (a DatasetSpec, or its YAML) must
    describe what the group holds; a group that holds nothing yet (even a repository that
    does not exist yet) takes it as the declaration its first write must follow. A group
    that has a spec keeps it unless ``force``.
    """
    group = normalize_group(group)
    declared = DatasetSpec.from_yaml(spec) if isinstance(spec, str) else spec
    credentials = load_credentials(target)
    try:
        repo = target.open_repository(credentials=credentials)
    except TargetNotFoundError:
        if declared is None:
            raise
        # declaring ahead of the first write, like the scheduled append's first run
        repo = target.open_repository(create=True, credentials=credentials)
    with serialized(target, group, repo=repo):
        _require_branch(repo, target)
        session = repo.writable_session(target.branch)
        stored = StoredGroup(session.store, group)
        if stored.spec is not None and not force:
            raise PlanError(
                "the group has a spec already; compare with it (icefloe spec diff), or "
                "replace it with force=True (icefloe spec init --force)",
                group=group,
            )
        if declared is None:
            _require_arrays(stored, target, group)
            chosen = DatasetSpec.from_group(stored, append_dim)
            chosen = chosen.with_bounds_of(stored.spec)
        else:
            if append_dim is not None and append_dim != declared.append_dim:
                raise PlanError(
                    f"append_dim {append_dim!r} differs from the spec's {declared.append_dim!r}; "
                    "drop one of them",
                    group=group,
                )
            if not stored.is_empty:
                _check_describes(stored, declared, group)
            chosen = declared
        if chosen == stored.spec:
            return chosen, session.snapshot_id  # already the group's spec: nothing to commit
        write_spec(session.store, group, chosen)
        block = _metadata(chosen, group, "the group's arrays" if declared is None else "a spec")
        # attributes only: the coverage record of the parent is carried on (tasks/coverage.py)
        unchanged = CoverageChange.attributes_only(group)
        with commit_lock(repo):
            snapshot = commit_session(
                session,
                f"icefloe: spec of {f'group {group}' if group else 'the root group'}",
                lambda s: {"icefloe": {**block, RECORD_KEY: coverage_record(repo, s, unchanged)}},
            )
    return chosen, snapshot


def diff_spec(
    target: Target,
    group: str | None = None,
    *,
    spec: DatasetSpec | str | None = None,
    source: SourceModel | Mapping[str, Any] | str | None = None,
    dataset: xr.Dataset | None = None,
) -> list[str]:
    """How ``spec`` (a DatasetSpec or YAML), or what ``source`` or ``dataset`` would create,
    differs from the group's spec (for a group without one: the spec of its arrays), one
    sentence each; empty when they agree. Data is compared on structure only, without
    chunks: a write keeps the stored chunks, and its labels are its own."""
    if sum(x is not None for x in (spec, source, dataset)) != 1:
        raise ValueError("compare one of a spec, a source or a dataset with the group")
    group = normalize_group(group)
    stored = _stored(_open(target), target, group)
    reference = stored.spec
    if reference is None:
        _require_arrays(stored, target, group)
        reference = DatasetSpec.from_group(stored)
    if source is not None or dataset is not None:
        dim = reference.append_dim
        if dataset is None:
            assert source is not None
            # a plain call of the task's function: no Prefect run is needed to compare
            dataset = open_source.fn(parse_source(source), append_dim=dim)
        found = DatasetSpec.from_dataset(dataset, dim if dim in dataset.dims else None)
        return reference.diff(found, structure_only=True, chunks=False)
    other = DatasetSpec.from_yaml(spec) if isinstance(spec, str) else spec
    assert other is not None
    return reference.diff(other)


# -- helpers ------------------------------------------------------------------------------------


def _open(target: Target) -> icechunk.Repository:
    return target.open_repository(credentials=load_credentials(target))


def _require_branch(repo: icechunk.Repository, target: Target) -> None:
    if target.branch not in repo.list_branches():
        raise TargetError(
            f"branch {target.branch!r} does not exist in {safe_url(target.repo)}: use one of "
            f"{sorted(repo.list_branches())} (--branch)"
        )


def _stored(repo: icechunk.Repository, target: Target, group: str | None) -> StoredGroup:
    _require_branch(repo, target)
    return StoredGroup(repo.readonly_session(branch=target.branch).store, group)


def _require_arrays(stored: StoredGroup, target: Target, group: str | None) -> None:
    if stored.arrays:
        return
    where = f"group {group!r}" if group else "the root group"
    raise GroupNotFoundError(
        f"{where} of {safe_url(target.repo)} (branch {target.branch}) holds no arrays to take "
        "a spec from; check --group for a typo, or declare the spec from a YAML file "
        "(icefloe spec init --from spec.yaml)",
        group=group,
    )


def _check_describes(stored: StoredGroup, declared: DatasetSpec, group: str | None) -> None:
    """A declared spec for a group that holds data must say what the data is."""
    found = DatasetSpec.from_group(stored, declared.append_dim, labels=pd.Index([]))
    problems = [
        f"the spec differs from what the group holds (group → spec): {d}"
        for d in found.diff(declared, structure_only=True)
    ]
    labels = stored.indexes.get(declared.append_dim)
    if declared.is_regular and labels is not None and len(labels):
        try:
            anchor = parse_label(declared.start, labels)
        except ValueError:
            problems.append(f"start {declared.start!r} is not a label like {labels[0]}")
        else:
            grid = label_grid(anchor, labels[-1], declared.step)
            on_grid = labels_in(grid, labels)
            if len(grid) != len(labels) or not on_grid.all():
                first = label_text(grid[~on_grid][0]) if not on_grid.all() else None
                problems.append(
                    f"stored labels along {declared.append_dim!r} are not every "
                    f"{declared.step!r} from the start {declared.start}"
                    + (f" ({first} is not stored)" if first else "")
                )
    if problems:
        raise PlanError(
            [
                *problems,
                "the spec must describe what the group holds: start from `icefloe spec show "
                "--inferred` (stored_structure), or change the data first (icefloe modify "
                "--update-spec)",
            ],
            group=group,
        )


def _metadata(spec: DatasetSpec, group: str | None, source: str) -> dict[str, Any]:
    run = current_run()
    return {
        "mode": "spec",
        "group": group,
        "variables": sorted(spec.variables),
        "source": source,
        "append_dim": spec.append_dim,
        "step": spec.step,
        "flow_run_id": run.flow_run_id,
        "flow_run_name": run.flow_run_name,
        "deployment": run.deployment,
        "icefloe_version": package_version(),
    }
