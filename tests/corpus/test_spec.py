"""The declared spec on every corpus file: inferred from the first part as a create would
store it, the next part appends, and a part whose dtype, units or calendar drifted is
refused by plan() with the branch tip unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import icechunk
import pandas as pd
import pytest
import xarray as xr

from tasks.errors import PlanError
from tasks.planners.append import APPEND_COORD_CHUNK
from tasks.spec import DatasetSpec, read_spec
from tests.corpus.conftest import load
from tests.corpus.files import CorpusFile
from tests.corpus.scenarios import append_edges, appendable, assert_same_as_to_zarr
from tests.tasks.helpers import write

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

Drift = Callable[[xr.Dataset], xr.Dataset]


def drifts(ds: xr.Dataset, dim: str) -> dict[str, tuple[Drift, str]]:
    """The ways a next part of ``ds`` can drift that apply to it, and what the refusal says."""
    found: dict[str, tuple[Drift, str]] = {}
    along = {str(n): v for n, v in ds.data_vars.items() if dim in v.dims}
    plain_floats = [
        n
        for n, v in along.items()
        if v.dtype.kind == "f"
        and not {"scale_factor", "add_offset"} & set(v.encoding)
        and not ("_FillValue" in v.encoding and v.encoding.get("dtype", v.dtype).kind in "iu")
    ]
    if plain_floats:
        name = plain_floats[0]
        other = "float32" if ds[name].dtype == "float64" else "float64"
        found["dtype"] = (
            lambda part, name=name, other=other: part.assign({name: part[name].astype(other)}),
            f"{name!r} has dtype {other}",
        )
    with_units = [n for n, v in along.items() if "units" in v.attrs and v.dtype.kind in "fiu"]
    if with_units:
        name = with_units[0]
        found["units"] = (
            lambda part, name=name: part.assign({name: part[name].assign_attrs(units="furlong")}),
            f"variable {name!r} has units 'furlong' but the group's spec declares",
        )
    index = ds.indexes.get(dim)
    if isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
        calendar = "noleap" if isinstance(index, pd.DatetimeIndex) else "proleptic_gregorian"
        align = {"align_on": "year"} if getattr(index, "calendar", "") == "360_day" else {}
        found["calendar"] = (
            lambda part, c=calendar, a=align: part.convert_calendar(
                c, dim=dim, use_cftime=True, **a
            ),
            "calendar",
        )
    return found


def _append_created(first: xr.Dataset, dim: str) -> DatasetSpec:
    """The spec of a group an append of ``first`` created: the dataset's, with the append
    coordinate chunked for growth rather than to the first part's length."""
    spec = DatasetSpec.from_dataset(first, dim)
    if dim not in spec.variables:
        return spec  # a dimension without a coordinate: nothing grows but the data
    coordinate = spec.variables[dim]
    grown = (max(APPEND_COORD_CHUNK, first.sizes[dim]),)
    variables = {**spec.variables, dim: coordinate.model_copy(update={"chunks": grown})}
    return spec.model_copy(update={"variables": variables})


def test_a_corpus_files_spec_guards_the_appends_of_its_next_parts(
    corpus_file: CorpusFile, repo: icechunk.Repository, tmp_path: Path
) -> None:
    ds, dim = load(corpus_file), corpus_file.dim
    n = ds.sizes[dim]
    split = append_edges(n)[1]
    first, rest = ds.isel({dim: slice(0, split)}), ds.isel({dim: slice(split, n)})

    if not appendable(ds, dim):
        # labels that repeat or decrease: created, never appended (test_library.py), and
        # the spec says what the create stored
        write(repo, ds, lambda w: w.for_create_or_overwrite(group="g"))
        stored = read_spec(repo.readonly_session(branch="main").store, "g")
        assert stored == DatasetSpec.from_dataset(ds)
        return
    # the group's first write: an append into nothing creates it, declaring its append dim
    write(repo, first, lambda w: w.for_append(group="g", append_dim=dim))
    spec = read_spec(repo.readonly_session(branch="main").store, "g")
    assert spec == _append_created(first, dim)
    assert spec is not None
    assert spec.append_dim == dim
    if corpus_file.strings_outgrow_first_part:
        return  # appending the rest is refused for reasons of its own (test_library.py)
    cases = drifts(rest, dim)
    for case, (drift, says) in cases.items():
        before = repo.lookup_branch("main")
        with pytest.raises(PlanError, match=None) as raised:
            write(repo, drift(rest.copy()), lambda w: w.for_append(group="g", append_dim=dim))
        assert says in str(raised.value), (case, str(raised.value))
        assert repo.lookup_branch("main") == before, case

    write(repo, rest, lambda w: w.for_append(group="g", append_dim=dim))
    assert read_spec(repo.readonly_session(branch="main").store, "g") == spec
    assert_same_as_to_zarr(repo, "g", ds, tmp_path, "spec")
