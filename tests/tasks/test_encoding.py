"""The compressors of the arrays a write creates: icefloe's default where the encoding names
none, the caller's (or the source's) where it does, and the stored ones on every later write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from tests.cf_datasets import cf_dataset, lazy
from tests.corpus.scenarios import read_group, to_zarr_reference
from tests.tasks.helpers import write


def _stored(repo: icechunk.Repository, group: str, name: str) -> zarr.Array[Any]:
    session = repo.readonly_session(branch="main")
    return zarr.open_array(session.store, path=f"{group}/{name}", mode="r")


def _compressors(repo: icechunk.Repository, group: str, name: str) -> tuple[Any, ...]:
    return tuple(_stored(repo, group, name).compressors)


def test_created_numbers_are_shuffled_and_compressed_with_zstd(repo, tmp_path: Path) -> None:
    ds = lazy(cf_dataset(12))
    write(repo, ds, lambda w: w.for_create_or_overwrite("g"))
    got = read_group(repo, "g")
    xr.testing.assert_identical(got, to_zarr_reference(ds, tmp_path, "create"))
    shuffled = set()
    for name, variable in ds.variables.items():
        stored = _stored(repo, "g", str(name))
        (codec,) = stored.compressors
        if stored.dtype != np.float32:
            # float64 coordinates, times, packed int16, strings: zarr's own default
            assert isinstance(codec, ZstdCodec), (name, stored.dtype, codec)
            continue
        shuffled.add(name)
        assert isinstance(codec, BloscCodec), (name, stored.compressors)
        assert (str(codec.cname), codec.clevel) == ("zstd", 2), name
        assert codec.typesize == stored.dtype.itemsize, name
        assert str(codec.shuffle) == "shuffle", (name, variable.dtype)
    # the float32 field; 'pr' is float64, 'tas_packed' int16
    assert shuffled == {"tas"}, shuffled


def test_compressors_given_in_the_encoding_are_kept(repo) -> None:
    ds = cf_dataset(8)
    encoding = {"tas": {"compressors": (ZstdCodec(level=7),)}, "pr": {"compressors": None}}
    write(repo, ds, lambda w: w.for_create_or_overwrite("g", encoding=encoding))
    (tas_codec,) = _compressors(repo, "g", "tas")
    assert isinstance(tas_codec, ZstdCodec)
    assert tas_codec.level == 7
    # None is zarr's spelling of "store the bytes uncompressed"
    assert _compressors(repo, "g", "pr") == ()
    got = read_group(repo, "g")
    np.testing.assert_array_equal(got.tas.values, ds.tas.values)
    np.testing.assert_array_equal(got.pr.values, ds.pr.values)


def test_later_writes_keep_the_stored_compressors(repo, tmp_path: Path) -> None:
    """A group xarray created (zarr's zstd) grows and gains a variable: the existing arrays
    keep zstd, only the new array takes icefloe's default."""
    ds = cf_dataset(12)
    session = repo.writable_session("main")
    first = ds.isel(time=slice(0, 8))
    first.to_zarr(session.store, group="g", mode="w-", consolidated=False, zarr_format=3)
    session.commit("created by xarray")
    write(repo, lazy(ds.isel(time=slice(8, 12))), lambda w: w.for_append("g", "time"))
    write(repo, ds[["tas"]].rename(tas="tas_copy"), lambda w: w.for_modify("g"))

    (tas_codec,) = _compressors(repo, "g", "tas")
    assert isinstance(tas_codec, ZstdCodec)
    (new_codec,) = _compressors(repo, "g", "tas_copy")
    assert isinstance(new_codec, BloscCodec)
    got = read_group(repo, "g")
    np.testing.assert_array_equal(got.tas.values, ds.tas.values)
    np.testing.assert_array_equal(got.tas_copy.values, ds.tas.values)
