"""Corpus files are opened once per test module; the scenarios write them many times."""

from __future__ import annotations

import warnings

import pytest
import xarray as xr
from distributed import LocalCluster

from tests.corpus.files import CORPUS, CorpusFile


@pytest.fixture(params=CORPUS, ids=[f.key for f in CORPUS])
def corpus_file(request: pytest.FixtureRequest) -> CorpusFile:
    return request.param


def load(file: CorpusFile) -> xr.Dataset:
    """The file's values in memory, as plain xarray decodes them, minus the encoding keys
    that to_zarr cannot encode, fixed as the PlanError advises (``CorpusFile.fix``)."""
    with warnings.catch_warnings():
        # the real files trigger xarray's notes on odd units and future defaults
        warnings.simplefilter("ignore")
        return file.fixed(file.open().load())


@pytest.fixture(scope="session")
def scheduler_address(local_cluster: LocalCluster) -> str:
    """The flows run on the session's 2-process cluster instead of starting one per run."""
    return str(local_cluster.scheduler_address)
