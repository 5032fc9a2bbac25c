"""What a write will do, decided before anything is written, and printable as a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import xarray as xr

from tasks.chunking import Region
from tasks.request import WriteMode

if TYPE_CHECKING:
    from tasks.spec import DatasetSpec
    from tasks.stored import StoredGroup

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
    # labels an append (on_gap="fill") leaves as fill values: (first, last, count) per run
    gaps: tuple[tuple[str, str, int], ...] = ()
    # the first missing label an append (on_gap="stop") stopped before; later labels wait
    stopped_at: str | None = None

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
        for first, last, count in self.gaps:
            counted = "1 label" if count == 1 else f"{count} labels"
            lines.append(f"gap left as fill values: {first} … {last} ({counted})")
        if self.stopped_at is not None:
            lines.append(
                f"stopped before the missing label {self.stopped_at}: later labels wait for "
                "a run that finds it"
            )
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
    spec: SpecUpdate | None = None


@dataclass(frozen=True)
class SpecUpdate:
    """How write_metadata renews the group's spec once the arrays are in place.

    The structure is read back from the group itself, so the spec says what was stored,
    with xarray's own choices of dtype and time units. ``labels`` (a new group's labels)
    give start and step, and then only ``base``'s operational bounds are kept; without
    them ``base`` keeps its labels and bounds and takes the structure of ``refresh``
    (None: every variable) from the group.
    """

    base: DatasetSpec | None
    append_dim: str
    labels: pd.Index | None = None
    refresh: tuple[str, ...] | None = None

    def apply(self, stored: StoredGroup) -> DatasetSpec:
        from tasks.spec import DatasetSpec

        labels = self.labels if self.labels is not None else pd.Index([])
        found = DatasetSpec.from_group(stored, self.append_dim, labels)
        if self.base is None:
            return found
        if self.labels is not None:
            return found.with_bounds_of(self.base)
        names = found.variables if self.refresh is None else self.refresh
        variables = dict(self.base.variables)
        variables.update({n: found.variables[n] for n in names if n in found.variables})
        time_encoding = self.base.time_encoding
        if self.refresh is None or self.append_dim in self.refresh:
            time_encoding = found.time_encoding
        return self.base.model_copy(update={"variables": variables, "time_encoding": time_encoding})


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
