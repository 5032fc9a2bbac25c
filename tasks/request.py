"""The write a caller asks for, as data: one frozen value that every layer passes along.

The writer plans it, the flows build it from their parameters, backfill builds one per
window, and the resume key and commit metadata describe it. Nothing in it depends on
the store: whether the request fits the group is the planner's question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.errors import PlanError
from tasks.stored import normalize_group

__all__ = ["Encoding", "OnGap", "OnOverlap", "RegionSpec", "WriteMode", "WriteRequest"]

WriteMode = Literal["create", "overwrite", "modify", "append", "region"]
OnOverlap = Literal["error", "skip", "overwrite"]
OnGap = Literal["error", "stop", "fill"]
RegionSpec = Mapping[str, slice | Literal["auto"]] | Literal["auto"]
Encoding = Mapping[str, Mapping[str, Any]]

_MODES: tuple[WriteMode, ...] = ("create", "overwrite", "modify", "append", "region")
_ON_OVERLAP: tuple[OnOverlap, ...] = ("error", "skip", "overwrite")
_ON_GAP: tuple[OnGap, ...] = ("error", "stop", "fill")


@dataclass(frozen=True, kw_only=True)
class WriteRequest:
    """What to write where, and how; see docs/modes.md for what each mode does.

    Options belong to modes: ``encoding`` to the modes that create arrays (create,
    overwrite, modify), ``only_new_vars`` and ``update_spec`` to modify, ``append_dim``,
    ``on_overlap``, ``on_gap``, ``update_attrs`` and ``fill_missing`` to append, ``region``
    to region. An option given to another mode is refused rather than ignored.

    ``on_gap`` says what an append does when its labels skip labels on the group's step
    (docs/spec.md): "error" refuses it, "stop" appends only the labels before the first
    missing one (the rest waits for a later run), "fill" writes the missing labels as fill
    values and records them as a gap in the commit. ``update_spec`` lets a modify change
    the structure the group's spec declares (dims, dtype, chunks, units, time encoding).
    """

    mode: WriteMode
    group: str | None = None
    encoding: Encoding | None = None
    only_new_vars: bool = False
    append_dim: str | None = None
    on_overlap: OnOverlap = "error"
    on_gap: OnGap = "error"
    update_spec: bool = False
    update_attrs: Mapping[str, Any] | None = None
    fill_missing: bool = False
    region: RegionSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group", normalize_group(self.group))
        if self.mode not in _MODES:
            raise PlanError(
                f"mode {self.mode!r} is not one of {', '.join(_MODES)}", group=self.group
            )
        if self.on_overlap not in _ON_OVERLAP:
            raise PlanError(
                f"on_overlap={self.on_overlap!r} is not one of {', '.join(_ON_OVERLAP)}",
                group=self.group,
            )
        if self.on_gap not in _ON_GAP:
            raise PlanError(
                f"on_gap={self.on_gap!r} is not one of {', '.join(_ON_GAP)}", group=self.group
            )
        if self.mode == "append" and not self.append_dim:
            raise PlanError(
                "an append needs append_dim: name the dimension to extend", group=self.group
            )
        if self.mode == "region" and self.region is None:
            object.__setattr__(self, "region", "auto")
        misplaced = [name for name, owner in self._options() if self.mode not in owner]
        if misplaced:
            raise PlanError(
                f"{', '.join(misplaced)} do(es) not apply to a {self.mode} write; drop "
                f"{'it' if len(misplaced) == 1 else 'them'} or choose the mode "
                f"{'it belongs' if len(misplaced) == 1 else 'they belong'} to",
                group=self.group,
            )

    def _options(self) -> list[tuple[str, tuple[WriteMode, ...]]]:
        given: list[tuple[str, tuple[WriteMode, ...]]] = []
        if self.encoding:
            given.append(("encoding", ("create", "overwrite", "modify")))
        if self.only_new_vars:
            given.append(("only_new_vars", ("modify",)))
        if self.append_dim is not None:
            given.append(("append_dim", ("append",)))
        if self.on_overlap != "error":
            given.append(("on_overlap", ("append",)))
        if self.on_gap != "error":
            given.append(("on_gap", ("append",)))
        if self.update_spec:
            given.append(("update_spec", ("modify",)))
        if self.update_attrs:
            given.append(("update_attrs", ("append",)))
        if self.fill_missing:
            given.append(("fill_missing", ("append",)))
        if self.region is not None:
            given.append(("region", ("region",)))
        return given

    @property
    def changes_metadata(self) -> bool:
        """Whether the write may create, resize or delete arrays (a region write never does)."""
        return self.mode != "region"

    @property
    def creates_group(self) -> bool:
        return self.mode in ("create", "overwrite")

    def describe(self) -> dict[str, Any]:
        """The request as plain JSON-able values, for digests, logs and commit metadata."""
        described: dict[str, Any] = {"mode": self.mode, "group": self.group}
        for name, _ in self._options():
            value = getattr(self, name)
            if name == "region" and value != "auto":
                value = {
                    dim: "auto" if bounds == "auto" else [bounds.start, bounds.stop]
                    for dim, bounds in value.items()
                }
            elif isinstance(value, Mapping):
                value = {str(k): dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
            described[name] = value
        return described
