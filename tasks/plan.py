"""What a write will do, decided before anything is written, and printable as a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import xarray as xr

from tasks.chunking import Region
from tasks.request import WriteMode

ArrayAction = Literal[
    "create", "replace", "resize", "overwrite", "region", "fill", "skip", "delete"
]
Phase = Literal["metadata", "eager", "lazy", "none"]


@dataclass(frozen=True)
class ArrayPlan:
    """One array of the group: what happens to it and how much each phase writes."""

    name: str
    action: ArrayAction
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    old_shape: tuple[int, ...] | None
    chunks: tuple[int, ...]
    dtype: str
    phase: Phase
    chunks_written: int = 0
    bytes_written: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class WritePlan:
    """The dry run of a write: every array, every attribute change, and the totals per phase."""

    mode: WriteMode
    group: str | None
    arrays: tuple[ArrayPlan, ...]
    group_attrs: Mapping[str, Any]
    attrs_changed: tuple[str, ...]
    append_dim: str | None = None
    label_range: tuple[str, str] | None = None
    region: Mapping[str, tuple[int, int]] | None = None
    # append: the positions along append_dim it writes, [first, stop) (overlapping labels
    # rewritten by on_overlap="overwrite" included); what the coverage record re-judges
    append_span: tuple[int, int] | None = None

    @property
    def variables(self) -> list[str]:
        """Arrays whose data or metadata the write changes."""
        return [a.name for a in self.arrays if a.action != "skip"]

    @property
    def changes_nothing(self) -> bool:
        return not self.variables and not self.attrs_changed

    def chunks_in_phase(self, phase: Phase) -> int:
        return sum(a.chunks_written for a in self.arrays if a.phase == phase)

    def bytes_in_phase(self, phase: Phase) -> int:
        return sum(a.bytes_written for a in self.arrays if a.phase == phase)

    @property
    def chunks_written(self) -> int:
        return sum(a.chunks_written for a in self.arrays)

    @property
    def bytes_written(self) -> int:
        return sum(a.bytes_written for a in self.arrays)

    def __str__(self) -> str:
        where = f"group {self.group!r}" if self.group else "the root group"
        lines = [f"{self.mode} {where}"]
        if self.append_dim and self.label_range:
            lines[0] += f" along {self.append_dim!r}: {self.label_range[0]} … {self.label_range[1]}"
        if self.region:
            spans = ", ".join(f"{d}[{a}:{b}]" for d, (a, b) in self.region.items())
            lines[0] += f" in region {spans}"
        header = (
            "array",
            "action",
            "dims",
            "shape",
            "chunks",
            "dtype",
            "phase",
            "n chunks",
            "bytes",
        )
        rows = [header]
        for a in self.arrays:
            shape = _shape(a.shape)
            if a.old_shape is not None and a.old_shape != a.shape:
                shape = f"{_shape(a.old_shape)} → {shape}"
            rows.append(
                (
                    a.name,
                    a.action + (f" ({a.note})" if a.note else ""),
                    ",".join(a.dims) or "-",
                    shape,
                    _shape(a.chunks),
                    a.dtype,
                    a.phase,
                    str(a.chunks_written),
                    human_bytes(a.bytes_written),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.attrs_changed:
            lines.append("attributes set: " + ", ".join(self.attrs_changed))
        totals = ", ".join(
            f"{phase} {self.chunks_in_phase(phase)} chunks / {human_bytes(self.bytes_in_phase(phase))}"
            for phase in ("metadata", "eager", "lazy")
        )
        lines.append(f"writes: {totals}")
        return "\n".join(lines)


@dataclass
class ArrayWrite:
    """Values of one variable going into a region of an existing (or just created) array."""

    name: str
    variable: xr.Variable
    region: Region
    lazy: bool


@dataclass
class MetadataSteps:
    """The structural changes write_metadata makes, in order: delete, create, resize, attributes."""

    delete: list[str] = field(default_factory=list)
    create_mode: Literal["w", "w-", "a"] | None = None
    template: xr.Dataset | None = None
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    resize: dict[str, tuple[int, ...]] = field(default_factory=dict)
    group_attrs: dict[str, Any] = field(default_factory=dict)
    array_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
