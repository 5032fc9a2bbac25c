"""zarr's default compressors against icefloe's, on one thread, by the arrays' dtype.

Each array is compressed whole with each codec, the way a dask worker's zarr thread
compresses a chunk (numcodecs' Blosc uses no threads of its own there): bytes out, and
MB/s to compress and to decompress. The arrays are the bulk write's chunks and, when the
test extras are installed, every numeric variable of the corpus's files (tests/corpus),
so the default is judged on real files as well as on the benchmark's own data.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
from zarr.codecs import BloscCodec, ZstdCodec

from benchmarks.data import Shape
from tasks.encoding import default_compressors

ZARR_DEFAULT = "zarr's default (zstd 3)"
ICEFLOE_DEFAULT = "icefloe's default"


def compare(shape: Shape, repeats: int = 2) -> dict[str, Any]:
    """Rows per source and dtype: size, ratio and speeds of both defaults."""
    sources = {"benchmark data (float32)": _bulk_chunks(shape)}
    if corpus := _corpus_arrays():
        sources["corpus files"] = corpus
    rows = []
    with _single_threaded_blosc():
        for source, arrays in sources.items():
            by_dtype: dict[str, list[np.ndarray[Any, Any]]] = defaultdict(list)
            for array in arrays:
                by_dtype[array.dtype.str.lstrip("<>=|")].append(array)
            for dtype, group in sorted(by_dtype.items()):
                rows.append(_row(source, dtype, group, repeats))
    return {"rows": rows, "corpus": "corpus files" in sources}


def _row(
    source: str, dtype: str, arrays: list[np.ndarray[Any, Any]], repeats: int
) -> dict[str, Any]:
    """Both defaults on ``arrays``; where icefloe keeps zarr's, one measurement serves both."""
    zarr_default = _measure(_numcodecs(ZstdCodec(), arrays[0].dtype), arrays, repeats)
    ours = default_compressors(arrays[0].dtype)
    return {
        "source": source,
        "dtype": dtype,
        "arrays": len(arrays),
        "bytes": sum(a.nbytes for a in arrays),
        "icefloe_codec": f"Blosc {ours[0].cname} {ours[0].clevel}, shuffled"
        if ours
        else ZARR_DEFAULT,
        ZARR_DEFAULT: zarr_default,
        ICEFLOE_DEFAULT: (
            _measure(_numcodecs(ours[0], arrays[0].dtype), arrays, repeats)
            if ours
            else zarr_default
        ),
    }


def _measure(codec: Any, arrays: list[np.ndarray[Any, Any]], repeats: int) -> dict[str, float]:
    nbytes = sum(a.nbytes for a in arrays)
    compressed, compress_s, decompress_s = 0, 0.0, 0.0
    for array in arrays:
        for _ in range(repeats):
            began = time.perf_counter()
            encoded = codec.encode(array)
            compress_s += time.perf_counter() - began
            began = time.perf_counter()
            codec.decode(encoded)
            decompress_s += time.perf_counter() - began
        compressed += len(encoded)
    return {
        "stored_bytes": compressed,
        "ratio": nbytes / compressed,
        "compress_mb_s": nbytes * repeats / 1e6 / compress_s,
        "decompress_mb_s": nbytes * repeats / 1e6 / decompress_s,
    }


def _numcodecs(codec: Any, dtype: np.dtype[Any]) -> Any:
    """The numcodecs codec that zarr runs for ``codec`` on arrays of ``dtype``."""
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level)
    if isinstance(codec, BloscCodec):
        shuffle = numcodecs.Blosc.BITSHUFFLE if dtype.itemsize == 1 else numcodecs.Blosc.SHUFFLE
        return numcodecs.Blosc(cname=str(codec.cname), clevel=codec.clevel, shuffle=shuffle)
    raise TypeError(f"no numcodecs equivalent of {codec!r}")


def _bulk_chunks(shape: Shape) -> list[np.ndarray[Any, Any]]:
    ds = shape.open()
    return [np.asarray(var.data.blocks[0].compute()) for var in ds.data_vars.values()]


def _corpus_arrays() -> list[np.ndarray[Any, Any]]:
    """The numeric variables of the corpus's files as stored (packed, unmasked), native order."""
    try:
        from tests.corpus.files import CORPUS
    except ImportError:  # the test extras are not installed
        return []
    import xarray as xr

    arrays = []
    for corpus_file in CORPUS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = xr.open_dataset(corpus_file.file, mask_and_scale=False, decode_times=False)
            except (OSError, ValueError):  # GRIB files need cfgrib's decoding
                continue
            for variable in ds.data_vars.values():
                if variable.dtype.kind in "iuf" and variable.size >= 5000:
                    values = np.asarray(variable.values)
                    arrays.append(
                        np.ascontiguousarray(values.astype(values.dtype.newbyteorder("=")))
                    )
    return arrays


@contextlib.contextmanager
def _single_threaded_blosc() -> Iterator[None]:
    before = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = before
