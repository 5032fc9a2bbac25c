"""Flow tests share the session's 2-process dask cluster; those that run flows also use the
session's Prefect API (``pytestmark = pytest.mark.usefixtures("prefect_harness")``)."""

from __future__ import annotations

import pytest
from distributed import LocalCluster


@pytest.fixture(scope="session")
def scheduler_address(local_cluster: LocalCluster) -> str:
    """Flows connect here instead of starting a cluster per run (seconds saved per test)."""
    return str(local_cluster.scheduler_address)
