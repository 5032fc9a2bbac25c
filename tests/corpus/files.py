"""The conformance corpus: real files shipped inside pinned PyPI packages (no downloads).

Each entry says where the file comes from, who produced it, what makes it special, how
it is opened and sliced (to keep the corpus fast), and along which dimension the
scenarios append, rewrite regions and derive variables.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr


@dataclass(frozen=True)
class CorpusFile:
    key: str
    package: str  # the importable package that ships the file
    path: str  # relative to the package directory
    producer: str
    special: str
    dim: str  # the dimension the scenarios append along and cut regions from
    engine: str | None = None
    isel: Mapping[str, slice] = field(default_factory=dict)
    # (variable, the fix the PlanError must name) for what xarray's to_zarr cannot encode:
    # plan() refuses the file as it is; after ``fix`` (that advice, applied) every mode works
    refused: tuple[tuple[str, str], ...] = ()
    fix: Callable[[xr.Dataset], xr.Dataset] | None = None
    # a variable whose later strings are longer than the first part's: through the flows
    # (variable-length netCDF strings, opened lazily) xarray creates a fixed-width array
    # as wide as the first part, so the append is refused rather than cut short
    strings_outgrow_first_part: str | None = None

    @property
    def file(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise RuntimeError(
                f"corpus file {self.key}: package {self.package!r} is not installed; install "
                "the test extra (pip install -c constraints.txt -e '.[test]')"
            )
        return Path(os.path.dirname(spec.origin)) / self.path

    def open(self, **kwargs: Any) -> xr.Dataset:
        """The file opened by plain xarray, sliced as listed (values not loaded)."""
        if self.engine == "cfgrib":
            # no index file next to the GRIB file: the package directory is not ours
            kwargs.setdefault("backend_kwargs", {"indexpath": ""})
        ds = xr.open_dataset(self.file, engine=self.engine, **kwargs)
        return ds.isel(dict(self.isel)) if self.isel else ds

    def fixed(self, ds: xr.Dataset) -> xr.Dataset:
        """``ds`` after the fix the PlanError tells the user (unchanged if none is needed)."""
        return self.fix(ds.copy()) if self.fix is not None else ds


def _fix_scipy_masked(ds: xr.Dataset) -> xr.Dataset:
    # exactly what the PlanError says to do
    del ds["var3_fillvalAndMissingValue"].encoding["missing_value"]
    ds["var6_char"] = ds["var6_char"].fillna(b"b")
    ds["var6_char"].encoding.pop("_FillValue", None)
    return ds


ISD = "iris_sample_data"
SD = "sample_data"

CORPUS: tuple[CorpusFile, ...] = (
    # --- climate model output: Met Office HadCM3 (iris-sample-data)
    CorpusFile(
        "hadcm3_a1b",
        ISD,
        f"{SD}/A1B_north_america.nc",
        "Met Office Hadley Centre, HadCM3",
        "SRES A1B air temperature; 360_day float64 hours, time_bnds, scalar cftime "
        "forecast_reference_time, grid-mapping scalar, netCDF4 chunksizes",
        "time",
        isel={"time": slice(0, 36)},
    ),
    CorpusFile(
        "hadcm3_e1",
        ISD,
        f"{SD}/E1_north_america.nc",
        "Met Office Hadley Centre, HadCM3",
        "E1 scenario twin of A1B (same layout, other values)",
        "time",
        isel={"time": slice(0, 36)},
    ),
    CorpusFile(
        "hadcm3_hybrid_height",
        ISD,
        f"{SD}/hybrid_height.nc",
        "Met Office Unified Model",
        "rotated-pole grid, hybrid height levels with bounds, formula terms, scalar times",
        "model_level_number",
    ),
    CorpusFile(
        "um_rotated_pole",
        ISD,
        f"{SD}/rotated_pole.nc",
        "Met Office Unified Model",
        "rotated-pole mean sea-level pressure, rotated_latitude_longitude grid mapping",
        "grid_latitude",
    ),
    # --- ocean model output (NEMO / ORCA2)
    *(
        CorpusFile(
            f"nemo_{month}",
            ISD,
            f"{SD}/NEMO/nemo_1m_2015{month}01-2015{nxt}01_grid-T.nc",
            "NEMO ocean model (IPSL XIOS output)",
            "curvilinear 2-D nav_lat/nav_lon with cell bounds, time_counter of length 1, "
            "360_day time_centered(_bounds) in seconds, _FillValue and missing_value 1e20, zlib",
            "y",
            isel={"y": slice(100, 148), "x": slice(0, 64)},
        )
        for month, nxt in (("01", "02"), ("02", "03"), ("03", "04"))
    ),
    CorpusFile(
        "orca2_votemper",
        ISD,
        f"{SD}/orca2_votemper.nc",
        "NEMO ORCA2 ocean grid",
        "curvilinear tripolar grid without dimension coordinates, float32 scalar time "
        "in seconds since 0001-01-01 (360_day), _FillValue 9.97e36",
        "dim0",
        isel={"dim0": slice(0, 48), "dim1": slice(0, 90)},
    ),
    CorpusFile(
        "atlantic_profiles",
        ISD,
        f"{SD}/atlantic_profiles.nc",
        "Met Office ocean analysis",
        "temperature/salinity profiles on depth levels, _FillValue 32767, scalar time",
        "depth",
    ),
    # --- satellite gridded products
    CorpusFile(
        "ostia_monthly",
        ISD,
        f"{SD}/ostia_monthly.nc",
        "Met Office OSTIA (satellite SST analysis)",
        "land-masked SST with _FillValue 1e20, time and forecast_reference_time with bounds",
        "time",
        isel={"time": slice(0, 36)},
    ),
    CorpusFile(
        "toa_brightness",
        ISD,
        f"{SD}/toa_brightness_stereographic.nc",
        "Met Office (geostationary satellite imagery)",
        "stereographic projection, 2-D lat/lon, float32 scalar time, odd _FillValue -1.07e9",
        "y",
    ),
    # --- NWP / reanalysis
    CorpusFile(
        "grib2_polar_stereo",
        ISD,
        f"{SD}/polar_stereo.grib2",
        "Canadian Meteorological Service (GRIB2 through cfgrib)",
        "GRIB2 on a polar-stereographic grid, scalar time/step/valid_time, 2-D lat/lon",
        "y",
        engine="cfgrib",
        isel={"y": slice(0, 64)},
    ),
    CorpusFile(
        "grib1_ecmwf_example",
        "xarray",
        "tests/data/example.grib",
        "ECMWF (GRIB1 through cfgrib)",
        "ensemble members x time x pressure levels, timedelta step, valid_time along time",
        "time",
        engine="cfgrib",
    ),
    CorpusFile(
        "ncep_hgt_djf",
        "eofs",
        "examples/example_data/hgt_djf.nc",
        "NCEP/NCAR reanalysis",
        "winter-mean geopotential height; 'hours since 1-1-1' gregorian times with bounds, "
        "missing_value without _FillValue, netCDF3 classic",
        "time",
        isel={"time": slice(0, 36)},
    ),
    CorpusFile(
        "hadisst_anom",
        "eofs",
        "examples/example_data/sst_ndjfm_anom.nc",
        "Met Office Hadley Centre HadISST",
        "SST anomalies with missing_value 1e20 over land, time bounds, netCDF3 classic",
        "time",
        isel={"time": slice(0, 36)},
    ),
    # --- station / in-situ time series
    CorpusFile(
        "soi_darwin",
        ISD,
        f"{SD}/SOI_Darwin.nc",
        "Southern Oscillation Index, Darwin station",
        "monthly station series since 1882, int64 days since 1800, _FillValue -99.9",
        "time",
        isel={"time": slice(0, 120)},
    ),
    CorpusFile(
        "arm_sonde",
        "pyart",
        "testing/data/example_arm_sonde.cdf",
        "DOE ARM radiosonde (SGP)",
        "in-situ sounding: base_time + time_offset, qc integer flags, missing_value -9999, "
        "netCDF3 classic",
        "time",
        isel={"time": slice(0, 120)},
    ),
    CorpusFile(
        "arm_interpolated_sonde",
        "pyart",
        "testing/data/example_interpolatedsonde.cdf",
        "DOE ARM interpolated sonde value-added product",
        "time x height profiles, netCDF3 classic, missing_value",
        "time",
    ),
    CorpusFile(
        "vlstr_type",
        ISD,
        f"{SD}/vlstr_type.nc",
        "ECMWF ERA5 point extract (iris sample)",
        "variable-length string 'expver' along time, int32 hours without calendar",
        "time",
        isel={"time": slice(0, 60)},
        strings_outgrow_first_part="expver",
    ),
    # --- radar (CfRadial)
    CorpusFile(
        "cfradial_ppi",
        "pyart",
        "testing/data/example_cfradial_ppi.nc",
        "DOE ARM X-SAPR radar (CfRadial)",
        "radar PPI: ray time axis, fixed-width char arrays sweep_mode/prt_mode, zlib chunks",
        "time",
    ),
    CorpusFile(
        "cfradial_rhi",
        "pyart",
        "testing/data/example_cfradial_rhi.nc",
        "DOE ARM X-SAPR radar (CfRadial)",
        "radar RHI, same layout as the PPI",
        "time",
    ),
    CorpusFile(
        "cfradial_raster",
        "pyart",
        "testing/data/example_cfradial_cr_raster.nc",
        "NCAR cloud radar (CfRadial, netCDF3)",
        "int16 fields packed with scale_factor + add_offset and _FillValue -9999, char "
        "arrays, calibration dimension",
        "time",
        isel={"time": slice(0, 96)},
    ),
    # --- netCDF3 classic test files and odd layouts
    CorpusFile(
        "space_weather",
        ISD,
        f"{SD}/space_weather.nc",
        "Met Office space weather (netCDF3)",
        "netCDF3 classic, big-endian on disk, char scalar, rotated 2-D lat/lon",
        "height",
    ),
    CorpusFile(
        "mesh_ugrid",
        ISD,
        f"{SD}/mesh_C4_synthetic_float.nc",
        "UGRID cubed-sphere mesh (iris)",
        "unstructured mesh: face/edge/node dimensions without coordinates, 64-bit offset netCDF3",
        "nexample_C4_face",
    ),
    CorpusFile(
        "bears",
        "xarray",
        "tests/data/bears.nc",
        "xarray test suite (netCDF3)",
        "netCDF3 classic with a char array (S4 strings), int16/int32/float32/float64",
        "i",
    ),
    CorpusFile(
        "example_1",
        "xarray",
        "tests/data/example_1.nc",
        "Unidata netCDF example (netCDF3)",
        "int16 time 'hours since 1996-1-1', 4-D temperature",
        "lon",
    ),
    CorpusFile(
        "scipy_packed",
        "scipy",
        "io/tests/data/example_2.nc",
        "scipy test suite (netCDF3)",
        "a packed int32 dimension coordinate: scale_factor, add_offset, _FillValue and "
        "missing_value on the index itself",
        "Temperature",
    ),
    CorpusFile(
        "scipy_masked",
        "scipy",
        "io/tests/data/example_3_maskedvals.nc",
        "scipy test suite (netCDF3)",
        "_FillValue 0, _FillValue and missing_value together, missing_value alone, NaN fill, "
        "a char variable with _FillValue b'b'",
        "dim1",
        refused=(
            ("var3_fillvalAndMissingValue", "del ds['var3_fillvalAndMissingValue'].encoding"),
            ("var6_char", "ds['var6_char'] = ds['var6_char'].fillna(b'b')"),
        ),
        fix=_fix_scipy_masked,
    ),
)

BY_KEY = {f.key: f for f in CORPUS}
