"""What every write flow returns."""

from __future__ import annotations

from pydantic import BaseModel, PrivateAttr


class WriteResult(BaseModel):
    """The outcome of one write flow run, small and JSON-serialisable (Prefect may persist it)."""

    snapshot_id: str | None  # None when the run changed nothing (idempotent re-run)
    branch: str
    mode: str  # "create" | "overwrite" | "modify" | "append" | "region"
    group: str | None
    variables: list[str]
    chunks_written: int
    bytes_written: int
    skipped: bool

    # Not a field: the serialised result stays exactly the contract's. Set in the process
    # that ran the flow, so the CLI can print a dry run's plan.
    _plan: str | None = PrivateAttr(default=None)

    @property
    def plan(self) -> str | None:
        """The plan table of the run, in the process that ran it; None once serialised."""
        return self._plan
