"""The exceptions icefloe raises. Every message names the group, the variable and the fix."""

from __future__ import annotations


class IcefloeError(Exception):
    """Base class of every error icefloe raises on purpose."""


class PlanError(IcefloeError, ValueError):
    """The request contradicts the store or itself; raised by ``plan()`` before anything is written.

    ``problems`` lists every problem found, one sentence each.
    """

    def __init__(self, problems: list[str] | str, *, group: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.group = group
        where = f"group {group!r}" if group else "the root group"
        if len(self.problems) == 1:
            message = f"cannot write to {where}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            message = f"cannot write to {where}, {len(self.problems)} problems:\n{listed}"
        super().__init__(message)


class VerificationError(IcefloeError):
    """The store does not match the plan after write_metadata/write_eager. Lists every problem."""

    def __init__(self, problems: list[str], *, group: str | None = None) -> None:
        self.problems = list(problems)
        self.group = group
        where = f"group {group!r}" if group else "the root group"
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"verification of {where} failed with {len(self.problems)} problem(s); "
            f"discard the session, nothing was committed:\n{listed}"
        )


class ChunkConflictError(IcefloeError, ValueError):
    """Two dask tasks would write the same zarr chunk."""


class CommitConflictError(IcefloeError):
    """The branch moved and the changes could not be rebased onto it.

    ``overlapping`` says whether another commit wrote the same chunks (a real overlap,
    never retried) rather than changing metadata this run's changes depend on (a run
    that starts over from the new tip can then succeed).
    """

    def __init__(
        self, message: str, *, conflicts: list[str] | None = None, overlapping: bool = True
    ) -> None:
        self.conflicts = list(conflicts or [])
        self.overlapping = overlapping
        super().__init__(message)


class PhaseOrderError(IcefloeError, RuntimeError):
    """A writer phase was called before the phases it depends on."""
