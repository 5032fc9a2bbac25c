"""Manifest splitting: keep a commit's cost independent of how big the archive already is.

Icechunk keeps an array's chunk references in manifests, by default one per array. A
commit rewrites every manifest it changes, so with one manifest per array an append of
one time step into an array of a million chunks rewrites a million references, and each
append gets slower as the archive grows. Split along the append dimension, an append
touches only the last manifest; a backfill window only those of its own time range.

The split must be the same for every commit that touches an array: a commit made with
another split (or none) rewrites all of the array's manifests to its own layout (seen
with icechunk 2.3: one commit without the rule merged ten split manifests back into
one). So the rule is not a per-run setting but part of the repository's persisted
configuration (``Repository.save_config``), recorded by the first run that appends to the
group (once it has committed: a refused run changes nothing), and every later opener of the repository — icefloe's runs of any mode, and any
other icechunk client — splits the same way.

One rule per group: the group's arrays (``path_matches``), split along the append
dimension (``DimensionName``) every ``split_size`` chunks; arrays without that dimension
keep one manifest. Without an explicit size, the size is chosen from the group's chunk
grid so that a manifest holds about ``REFS_PER_MANIFEST`` references: small enough that
rewriting the last one costs little next to a commit's fixed cost, large enough that a
million-chunk array has about a hundred manifests, not tens of thousands.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import icechunk
import zarr
from zarr.errors import NodeNotFoundError

from tasks.commit import commit_lock

__all__ = [
    "REFS_PER_MANIFEST",
    "SplitRule",
    "group_arrays_pattern",
    "record_split_rule",
    "recorded_rules",
    "split_size_for",
    "with_split_rule",
]

log = logging.getLogger(__name__)

REFS_PER_MANIFEST = 10_000
# icechunk reads this many manifests at once while it commits, amends or flushes
# (its own default is 1: a region write that touches many manifests fetches them in turn)
DEFAULT_COMMIT_FETCHES = 16


@dataclass(frozen=True)
class SplitRule:
    """The arrays of ``group`` split every ``size`` chunks along ``dim``; size 0: one manifest."""

    group: str | None
    dim: str
    size: int

    def as_icechunk(
        self,
    ) -> tuple[
        icechunk.ManifestSplitCondition,
        tuple[tuple[icechunk.ManifestSplitDimCondition.DimensionName, int], ...],
    ]:
        condition = icechunk.ManifestSplitCondition.path_matches(group_arrays_pattern(self.group))
        if self.size <= 0:
            return condition, ()  # matches the arrays, splits nothing: "never split" is kept
        along = icechunk.ManifestSplitDimCondition.DimensionName(f"^{re.escape(self.dim)}$")
        return condition, ((along, self.size),)


def group_arrays_pattern(group: str | None) -> str:
    """The path regex of the arrays directly in ``group`` (absolute paths, as icechunk's)."""
    prefix = f"/{re.escape(group)}" if group else ""
    return f"^{prefix}/[^/]+$"


def recorded_rules(config: icechunk.RepositoryConfig | None) -> Iterator[tuple[str, str, int]]:
    """(path regex, dimension regex, size) of the splitting rules in ``config``, in order.

    Rules icefloe did not write (other conditions, several dimensions) are reported with
    their condition's text and an empty dimension, so that they are kept as they are.
    """
    splitting = _splitting_of(config)
    for condition, dims in splitting.split_sizes if splitting else ():
        regex = getattr(condition, "regex", None) or repr(condition)
        if not dims:
            yield regex, "", 0
        elif len(dims) == 1 and isinstance(
            dims[0][0], icechunk.ManifestSplitDimCondition.DimensionName
        ):
            yield regex, str(cast(Any, dims[0][0])[0]), int(dims[0][1])
        else:
            yield regex, "", -1


def split_size_for(session: icechunk.Session, group: str | None, dim: str) -> int:
    """Chunks along ``dim`` per manifest so that the group's biggest array holds about
    ``REFS_PER_MANIFEST`` references per manifest (1 when one step has more than that)."""
    try:
        zgroup = zarr.open_group(session.store, path=group or "", mode="r")
    except NodeNotFoundError:
        return REFS_PER_MANIFEST
    per_step = 1
    for _, array in zgroup.arrays():
        names = tuple(getattr(array.metadata, "dimension_names", None) or ())
        if dim not in names:
            continue
        axis = names.index(dim)
        grid = [
            math.ceil(s / c) if c else 1 for s, c in zip(array.shape, array.chunks, strict=True)
        ]
        per_step = max(per_step, math.prod(n for i, n in enumerate(grid) if i != axis))
    return max(1, REFS_PER_MANIFEST // per_step)


def with_split_rule(
    repo: icechunk.Repository,
    group: str | None,
    dim: str,
    size: int | None = None,
    *,
    branch: str = "main",
) -> tuple[icechunk.Repository, SplitRule | None]:
    """``repo`` with the group's splitting rule in force in this process, and the rule to
    record in the repository once the run has written (None: recorded already).

    An existing rule for the group is kept unless ``size`` is given and differs (an
    explicit setting replaces it; 0 means "never split"); without one the size comes
    from ``split_size_for``. Nothing is written here: a run that is refused or fails
    leaves the repository's configuration as it was (``record_split_rule`` writes it).
    """
    persisted = icechunk.Repository.fetch_config(repo.storage)
    pattern = group_arrays_pattern(group)
    existing = next((r for r in recorded_rules(persisted) if r[0] == pattern), None)
    wanted = (pattern, f"^{re.escape(dim)}$" if size is None or size > 0 else "", size)
    rule: SplitRule | None = None
    if existing is not None and (size is None or existing == (*wanted[:2], max(size, 0))):
        splitting = _splitting_of(persisted)
    else:
        if size is None:
            size = split_size_for(repo.readonly_session(branch=branch), group, dim)
        rule = SplitRule(group, dim, size)
        splitting = _replace_rule(persisted, rule)
    if list(recorded_rules(repo.config)) != list(recorded_rules(_config(splitting))):
        repo = repo.reopen(config=_config(splitting))
    return repo, rule


def record_split_rule(repo: icechunk.Repository, rule: SplitRule) -> None:
    """Record ``rule`` in the repository's persisted configuration (replacing the group's
    earlier rule, keeping every other rule in its place)."""
    with commit_lock(repo):  # the local filesystem cannot update the config atomically
        persisted = icechunk.Repository.fetch_config(repo.storage)
        splitting = _replace_rule(persisted, rule)
        # saved from a repository opened with the persisted configuration only: this
        # process's overrides (retries, fetch concurrency) must not become everyone's
        clean = icechunk.Repository.open(repo.storage)
        clean.reopen(config=_config(splitting)).save_config()
    log.info(
        "manifests of %s are split every %d chunks along %r from now on (recorded in the "
        "repository's configuration)",
        f"group {rule.group!r}" if rule.group else "the root group",
        rule.size,
        rule.dim,
    )


def _config(splitting: icechunk.ManifestSplittingConfig | None) -> icechunk.RepositoryConfig:
    return icechunk.RepositoryConfig(manifest=icechunk.ManifestConfig(splitting=splitting))


def _splitting_of(
    config: icechunk.RepositoryConfig | None,
) -> icechunk.ManifestSplittingConfig | None:
    return config.manifest.splitting if config and config.manifest else None


def _replace_rule(
    config: icechunk.RepositoryConfig | None, rule: SplitRule
) -> icechunk.ManifestSplittingConfig:
    splitting = _splitting_of(config)
    pattern = group_arrays_pattern(rule.group)
    kept = [
        (condition, dims)
        for condition, dims in (splitting.split_sizes if splitting else ())
        if getattr(condition, "regex", None) != pattern
    ]
    return icechunk.ManifestSplittingConfig((*kept, rule.as_icechunk()))
