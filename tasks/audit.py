"""Auditing a committed snapshot before it is published (write–audit–publish).

Unlike verify(), which reads the uncommitted session, the audit opens the commit the
way a reader will: by snapshot id, through xarray. It checks the planned shapes, the
labels along the written dimension, a sample of values against the source, and
optionally how much of each written variable is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import icechunk
import numpy as np
import xarray as xr

from tasks.errors import VerificationError
from tasks.plan import WritePlan
from tasks.stored import StoredGroup


@dataclass(frozen=True)
class AuditRules:
    """What a staged commit must satisfy besides matching its plan."""

    samples: int = 3
    max_nan_fraction: float | None = None


def audit_snapshot(
    repo: icechunk.Repository,
    snapshot_id: str,
    plan: WritePlan,
    source: xr.Dataset,
    rules: AuditRules | None = None,
) -> None:
    """Raise VerificationError listing every way the snapshot differs from plan and source."""
    rules = rules or AuditRules()
    session = repo.readonly_session(snapshot_id=snapshot_id)
    # decoded variable by variable: bounds left at fill values must not hide the rest
    stored = StoredGroup(session.store, plan.group).decoded()
    problems: list[str] = []
    for row in plan.arrays:
        if row.action == "delete":
            if row.name in stored.variables:
                problems.append(f"{row.name!r} should have been deleted")
            continue
        if row.name not in stored.variables:
            problems.append(f"{row.name!r} is missing from the commit")
        elif stored.variables[row.name].shape != row.shape:
            problems.append(
                f"{row.name!r} has shape {stored.variables[row.name].shape}, planned {row.shape}"
            )
    if not problems:
        problems += _compare_samples(stored, source, plan, rules.samples)
    if rules.max_nan_fraction is not None and not problems:
        problems += _nan_fractions(stored, source, plan, rules.max_nan_fraction)
    if problems:
        raise VerificationError(problems, group=plan.group)


def _written_part(stored: xr.Dataset, source: xr.Dataset, plan: WritePlan) -> xr.Dataset:
    """The stored values at the source's labels (or region), to compare with the source."""
    if plan.region:
        return stored.isel({d: slice(a, b) for d, (a, b) in plan.region.items()})
    indexers = {
        d: source.indexes[d] for d in source.dims if d in source.indexes and d in stored.indexes
    }
    return stored.sel(indexers)


def _compare_samples(
    stored: xr.Dataset, source: xr.Dataset, plan: WritePlan, samples: int
) -> list[str]:
    written = _written_part(stored, source, plan)
    problems = []
    for name in plan.variables:
        if name not in source.data_vars or name not in written.data_vars:
            continue
        expected, actual = source[name], written[name]
        dims = [str(d) for d in expected.dims]
        dim = plan.append_dim if plan.append_dim in dims else (dims[0] if dims else None)
        if dim is None:
            picks: list[dict[str, int]] = [{}]
        else:
            positions = np.unique(np.linspace(0, expected.sizes[dim] - 1, samples).astype(int))
            picks = [{dim: int(p)} for p in positions]
        for pick in picks:
            if not actual[pick].load().variable.equals(expected[pick].load().variable):
                where = (
                    ", ".join(f"{d}={expected[d][i].values}" for d, i in pick.items())
                    or "its value"
                )
                problems.append(f"{name!r} at {where} differs from the source")
    return problems


def _nan_fractions(
    stored: xr.Dataset, source: xr.Dataset, plan: WritePlan, limit: float
) -> list[str]:
    written = _written_part(stored, source, plan)
    problems = []
    for name in plan.variables:
        if name in written.data_vars and written[name].dtype.kind == "f" and written[name].size:
            fraction = float(written[name].isnull().mean())
            if fraction > limit:
                problems.append(
                    f"{name!r} is {fraction:.1%} missing in the written part, more than the "
                    f"allowed {limit:.1%}"
                )
    return problems
