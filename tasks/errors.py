"""The exceptions icefloe raises. Every message names the group, the variable and the fix."""

from __future__ import annotations

from typing import Final


class IcefloeError(Exception):
    """Base class of every error icefloe raises on purpose.

    ``refusal`` marks errors that mean "the request is wrong" (the store, the source or the
    options say no): flows end Failed with the message alone, the CLI prints one line, and
    nothing retries them. Errors that mean "icefloe itself is wrong" set it False and keep
    their traceback.
    """

    refusal: bool = True


class _NotAGroup:
    """The default of PlanError's ``group``: the problem is not about a group at all."""

    def __repr__(self) -> str:
        return "NOT_A_GROUP"


NOT_A_GROUP: Final = _NotAGroup()


class PlanError(IcefloeError, ValueError):
    """The request contradicts the store or itself; raised by ``plan()`` before anything is written.

    ``problems`` lists every problem found, one sentence each. ``group`` is the group the
    request writes to (None: the root group); leave it unset for problems that are not
    about a group (dates in the wrong order, a cutoff too recent), whose message is then
    just the problem, not "cannot write to the root group: ...".
    """

    def __init__(
        self, problems: list[str] | str, *, group: str | _NotAGroup | None = NOT_A_GROUP
    ) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.group = None if isinstance(group, _NotAGroup) else group
        prefix = ""
        if not isinstance(group, _NotAGroup):
            prefix = f"cannot write to {f'group {group!r}' if group else 'the root group'}"
        if len(self.problems) == 1:
            message = f"{prefix}: {self.problems[0]}" if prefix else self.problems[0]
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            counted = f"{len(self.problems)} problems:\n{listed}"
            message = f"{prefix}, {counted}" if prefix else counted
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle as cls(*args), which would wrap the finished message in a second
        # prefix; Prefect pickles a failed run's exception when it persists results.
        return (_rebuild_plan_error, (type(self), self.problems, self.group, str(self)))


def _rebuild_plan_error(
    cls: type[PlanError], problems: list[str], group: str | None, message: str
) -> PlanError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.problems = problems
    err.group = group
    return err


class GroupNotFoundError(PlanError, LookupError):
    """A mode that only writes into an existing group (append, modify, region) found none."""


class RequestError(IcefloeError, ValueError):
    """An option is malformed by itself, before any store is read: JSON that does not parse
    or does not fit the option's model, a value of the wrong kind. The message names the
    option, what is wrong and a valid example."""


class SourceNotFoundError(IcefloeError, FileNotFoundError):
    """The source names data that is not there: files no pattern matches, a missing store or
    group. Still a FileNotFoundError, which is what callers caught before."""


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` says the request is wrong (one clear line, no traceback, no retry)."""
    return isinstance(exc, IcefloeError) and exc.refusal


class VerificationError(IcefloeError):
    """The store does not match the plan after write_metadata/write_eager. Lists every problem."""

    # The plan passed, so the store disagreeing with it is icefloe's fault: keep the traceback.
    refusal = False

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

    refusal = False
