"""Every corpus file in every mode through the library (XarrayDatasetWriter, to_icechunk):
the repository read back by plain xarray is identical to ``Dataset.to_zarr`` of the same
final dataset, or plan() refuses with a PlanError that names the dimension and the fix."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from tasks.errors import PlanError
from tasks.writer import XarrayDatasetWriter, to_icechunk
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
from tests.tasks.helpers import write

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _tip(repo: icechunk.Repository) -> str:
    return repo.lookup_branch("main")


def test_create_in_one_go(corpus_file: CorpusFile, repo, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = corpus_file.open(chunks={})  # dask-backed, as a files source opens it
    for name, advice in corpus_file.refused:
        # what to_zarr cannot encode, plan() refuses, naming the variable and the fix
        writer = XarrayDatasetWriter(lazy, store=repo.writable_session("main").store)
        with pytest.raises(PlanError, match=rf"variable {name!r}.*{re.escape(advice)}"):
            writer.for_create_or_overwrite("g").plan()
    lazy = corpus_file.fixed(lazy)
    session = repo.writable_session("main")
    to_icechunk(lazy, session, group="g")
    session.commit("create")
    # compared with to_zarr of the same lazy dataset: xarray itself spells cftime units
    # differently for dask-backed ("hours since 1970-01-01 00:00:00") and in-memory values
    assert_same_as_to_zarr(repo, "g", lazy, tmp_path, "create")
    # ... though icefloe stores numbers with its own default compressors, not to_zarr's
    store = repo.readonly_session(branch="main").store
    for name in lazy.variables:
        array = zarr.open_array(store, path=f"g/{name}", mode="r")
        shuffled = array.dtype == np.float32
        assert isinstance(array.compressors[0], BloscCodec) == shuffled, (name, array.compressors)


def test_append_in_pieces_then_overlapping_reruns(
    corpus_file: CorpusFile, repo, tmp_path: Path
) -> None:
    ds, dim = load(corpus_file), corpus_file.dim
    edges = append_edges(ds.sizes[dim])
    n = ds.sizes[dim]
    write(repo, ds.isel({dim: slice(0, edges[1])}), lambda w: w.for_create_or_overwrite("g"))
    if not appendable(ds, dim):
        # labels that repeat or go backwards cannot be appended: refused before any write
        before = _tip(repo)
        with pytest.raises(PlanError, match=rf"{dim!r}.*(sortby|drop_duplicates|not after)"):
            write(repo, ds.isel({dim: slice(edges[1], n)}), lambda w: w.for_append("g", dim))
        assert _tip(repo) == before
        return
    # the last appended piece is corrupted; the overlapping re-runs must leave it (skip)
    # and then repair it (overwrite)
    last = edges[-2] if len(edges) > 2 else edges[1]
    wrong = scrambled(ds, dim, last, n - 1)
    for start, stop in itertools.pairwise(edges[1:]):
        piece = (wrong if stop > last else ds).isel({dim: slice(start, stop)})
        write(repo, piece, lambda w: w.for_append("g", dim))
    held_back = ds.isel({dim: slice(0, n - 1)})
    assert_same_as_to_zarr(
        repo, "g", wrong.isel({dim: slice(0, n - 1)}) if n > 2 else held_back, tmp_path, "pieces"
    )
    rerun = ds.isel({dim: slice(edges[1], n)})
    if not labelled(ds, dim):
        # without labels an overlap cannot be recognised: the plan says so
        for on_overlap in ("skip", "overwrite"):
            before = _tip(repo)
            with pytest.raises(PlanError, match=rf"on_overlap={on_overlap!r}.*{dim!r}"):
                write(repo, rerun, lambda w, o=on_overlap: w.for_append("g", dim, on_overlap=o))
            assert _tip(repo) == before
        write(repo, ds.isel({dim: slice(n - 1, n)}), lambda w: w.for_append("g", dim))
        expected = xr.concat(
            [wrong.isel({dim: slice(0, n - 1)}), ds.isel({dim: slice(n - 1, n)})],
            dim=dim,
            data_vars="minimal",
            coords="minimal",
            compat="override",
        )
        assert_same_as_to_zarr(repo, "g", expected if n > 2 else ds, tmp_path, "unlabelled")
        return
    # skip: the stored (wrong) labels stay, only the held-back label is written
    write(repo, rerun, lambda w: w.for_append("g", dim, on_overlap="skip"))
    skipped = xr.concat(
        [wrong.isel({dim: slice(0, n - 1)}), ds.isel({dim: slice(n - 1, n)})],
        dim=dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    assert_same_as_to_zarr(repo, "g", skipped, tmp_path, "skip")
    before = _tip(repo)
    write(repo, rerun, lambda w: w.for_append("g", dim, on_overlap="skip"))
    assert _tip(repo) == before  # a second identical re-run commits nothing
    # overwrite: the overlapping labels are rewritten with the true values
    write(repo, rerun, lambda w: w.for_append("g", dim, on_overlap="overwrite"))
    assert_same_as_to_zarr(repo, "g", ds, tmp_path, "overwrite")


def test_region_rewrite_of_a_middle_slice(corpus_file: CorpusFile, repo, tmp_path: Path) -> None:
    ds, dim = load(corpus_file), corpus_file.dim
    first, second = region_slices(ds.sizes[dim])
    write(
        repo,
        scrambled(ds, dim, first.start, second.stop),
        lambda w: w.for_create_or_overwrite("g"),
    )
    if labelled(ds, dim) and ds.indexes[dim].is_unique:
        write(repo, region_input(ds, dim, first), lambda w: w.for_region("g", "auto"))
    else:
        if labelled(ds, dim):
            # repeated labels cannot place a region: refused, with the explicit slice as fix
            before = _tip(repo)
            with pytest.raises(PlanError, match=rf"{dim!r}.*explicit slice"):
                write(repo, region_input(ds, dim, first), lambda w: w.for_region("g", "auto"))
            assert _tip(repo) == before
        write(repo, region_input(ds, dim, first), lambda w: w.for_region("g", {dim: first}))
    if second.stop > second.start:
        write(repo, region_input(ds, dim, second), lambda w: w.for_region("g", {dim: second}))
    assert_same_as_to_zarr(repo, "g", ds, tmp_path, "region")


def test_modify_adds_a_derived_variable_and_only_new_ones(
    corpus_file: CorpusFile, repo, tmp_path: Path
) -> None:
    ds = load(corpus_file)
    write(repo, ds, lambda w: w.for_create_or_overwrite("g"))
    twice = derived(ds, "derived_twice", 0.0)
    write(repo, twice.to_dataset(), lambda w: w.for_modify("g"))
    assert_same_as_to_zarr(repo, "g", ds.assign(derived_twice=twice), tmp_path, "modify")
    # the whole dataset plus one more: only the new variable is written
    plus_one = derived(ds, "derived_plus_one", 1.0)
    everything = ds.assign(derived_twice=twice, derived_plus_one=plus_one)
    plan = write(repo, everything, lambda w: w.for_modify("g").drop_existing_vars())
    assert {a.name for a in plan.arrays if a.action == "create"} == {"derived_plus_one"}
    assert_same_as_to_zarr(repo, "g", everything, tmp_path, "only-new")
