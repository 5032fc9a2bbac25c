"""Every corpus file through the flows with a ``files`` source, in one flow-driven sequence
per file: create_flow from the first part, append_flow with the rest (whose middle slice
is corrupted), region_flow repairing that slice; then the repository, read back by plain
xarray, must be identical to ``Dataset.to_zarr`` of the same data. An overlapping re-run of
the append commits nothing, and modify_flow adds a derived variable to every file.

The parts are netCDF4 files cut from the real file with xarray (encodings travel along);
the flows open them lazily (dask) and write them on the session's 2-process cluster.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import icechunk
import pytest
import xarray as xr

from flows import Target, append_flow, create_flow, modify_flow, region_flow
from tasks.errors import PlanError
from tests.corpus.conftest import load
from tests.corpus.files import CorpusFile
from tests.corpus.scenarios import (
    append_edges,
    appendable,
    assert_same_as_to_zarr,
    derived,
    labelled,
    region_input,
    region_slices,
    scrambled,
)

pytestmark = [
    pytest.mark.usefixtures("prefect_harness"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

# modify_flow rewrites the whole derived dataset on these (a 360_day cftime file and a
# packed int16 one); elsewhere it writes only the new variable (only_new_vars)
MODIFY_TOO = {"hadcm3_a1b", "cfradial_raster"}


def _part(ds: xr.Dataset, path: Path) -> dict[str, Any]:
    """``ds`` as a netCDF4 file, and the files source (a plain dict, as the UI passes it)."""
    # to_netcdf would add a NaN _FillValue beside a missing_value (xarray then refuses the
    # pair when it reads the part back and encodes it again): keep the file's own fill
    keep_fill = {
        name: {"_FillValue": None}
        for name, variable in ds.variables.items()
        if "missing_value" in variable.encoding and "_FillValue" not in variable.encoding
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_netcdf(path, engine="netcdf4", encoding=keep_fill)
    return {"kind": "files", "paths": [str(path)]}


def _as_flows_see_it(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """``ds`` the way a files source opens it: written to netCDF, opened lazily."""
    _part(ds, path)
    return xr.open_dataset(path, chunks={})


def test_files_through_create_append_region_flows(
    corpus_file: CorpusFile, tmp_path: Path, scheduler_address: str
) -> None:
    ds, dim = load(corpus_file), corpus_file.dim
    n = ds.sizes[dim]
    target = Target(repo=str(tmp_path / "repo"))
    run: dict[str, Any] = {
        "group": "g",
        "scheduler_address": scheduler_address,
        # one writer per repository here: no need for the group lock's API round trips
        "options": {"serialize": False},
    }
    first, second = region_slices(n)
    repaired = slice(first.start, second.stop)
    wrong = scrambled(ds, dim, repaired.start, repaired.stop)
    split = append_edges(n)[1]
    create_flow(target, _part(wrong.isel({dim: slice(0, split)}), tmp_path / "p0.nc"), **run)
    rest = _part(wrong.isel({dim: slice(split, n)}), tmp_path / "p1.nc")
    if appendable(ds, dim) and not corpus_file.strings_outgrow_first_part:
        append_flow(target, rest, append_dim=dim, **run)
    elif appendable(ds, dim):
        # longer strings than the stored fixed width: refused, never truncated
        name = corpus_file.strings_outgrow_first_part
        before = _tip(target)
        with pytest.raises(PlanError, match=rf"{name!r} holds strings.*cut them short"):
            append_flow(target, rest, append_dim=dim, **run)
        assert _tip(target) == before
        create_flow(target, _part(wrong, tmp_path / "whole.nc"), overwrite=True, **run)
    else:
        # repeated or decreasing labels: refused before anything is written
        before = _tip(target)
        with pytest.raises(PlanError, match=repr(dim)):
            append_flow(target, rest, append_dim=dim, **run)
        assert _tip(target) == before
        create_flow(target, _part(wrong, tmp_path / "whole.nc"), overwrite=True, **run)
    by_label = labelled(ds, dim) and ds.indexes[dim].is_unique
    region = "auto" if by_label else {dim: (repaired.start, repaired.stop)}
    region_flow(target, _part(region_input(ds, dim, repaired), tmp_path / "fix.nc"), region, **run)
    expected = _as_flows_see_it(ds, tmp_path / "expected.nc")
    if labelled(ds, dim) and appendable(ds, dim) and not corpus_file.strings_outgrow_first_part:
        # a scheduled re-run of the append (labels tell what is stored): nothing is committed
        before = _tip(target)
        again = append_flow(target, rest, append_dim=dim, on_overlap="skip", **run)
        assert (again.snapshot_id, _tip(target)) == (None, before)
    # modify on every file: only the new variable (drop_existing_vars) on most, the whole
    # dataset, coordinates rewritten, on a cftime and a packed file
    twice = derived(ds, "derived_twice", 0.0)
    only_new = corpus_file.key not in MODIFY_TOO
    modify_flow(
        target, _part(twice.to_dataset(), tmp_path / "derived.nc"), only_new_vars=only_new, **run
    )
    expected = expected.assign(
        derived_twice=_as_flows_see_it(twice.to_dataset(), tmp_path / "d.nc").derived_twice
    )
    assert_same_as_to_zarr(_repo(target), "g", expected, tmp_path, "flows")


def _repo(target: Target) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))


def _tip(target: Target) -> str:
    return _repo(target).lookup_branch("main")
