"""WriteRequest: the write as one value, refused when its options do not fit its mode."""

from __future__ import annotations

import icechunk
import pytest
import xarray as xr

from tasks.errors import PlanError
from tasks.request import WriteRequest
from tasks.writer import XarrayDatasetWriter, store_dask, to_icechunk
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import plain_xarray, read_back
from tests.tasks.helpers import write

pytestmark = pytest.mark.usefixtures("scheduler")


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"mode": "append"}, "an append needs append_dim"),
        ({"mode": "region", "append_dim": "time"}, "append_dim do(es) not apply to a region write"),
        ({"mode": "create", "on_overlap": "skip"}, "on_overlap do(es) not apply to a create write"),
        (
            {"mode": "append", "append_dim": "time", "encoding": {"tas": {}}, "region": "auto"},
            "encoding, region do(es) not apply to a append write",
        ),
        ({"mode": "modify", "fill_missing": True}, "fill_missing do(es) not apply"),
        ({"mode": "upsert"}, "mode 'upsert' is not one of create, overwrite, modify"),
        ({"mode": "append", "append_dim": "time", "on_overlap": "merge"}, "on_overlap='merge'"),
    ],
)
def test_options_that_do_not_fit_the_mode_are_refused(
    request_kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(PlanError) as raised:
        WriteRequest(**request_kwargs)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_group_is_checked_and_region_defaults_to_auto() -> None:
    request = WriteRequest(mode="region", group="/")
    assert request.group is None
    assert request.region == "auto"
    assert request.describe() == {"mode": "region", "group": None, "region": "auto"}
    with pytest.raises(PlanError, match="is absolute"):
        WriteRequest(mode="region", group="/g")
    explicit = WriteRequest(mode="region", group="g", region={"time": slice(2, 4)})
    assert explicit.describe()["region"] == {"time": [2, 4]}


def test_for_request_writes_what_the_for_methods_write(repo: icechunk.Repository, tmp_path) -> None:
    full = lazy(cf_dataset(10), time_chunk=3)
    create = WriteRequest(mode="create", group="g")
    append = WriteRequest(mode="append", group="g", append_dim="time", on_overlap="skip")

    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_request(create))
    plan = write(repo, full.isel(time=slice(4, 10)), lambda w: w.for_request(append))

    assert plan.mode == "append"
    assert plan.label_range is not None
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(full, tmp_path))
    session = repo.writable_session("main")
    via_method = XarrayDatasetWriter(full, store=session.store).for_append(
        group="g", on_overlap="skip"
    )
    assert via_method.request == append


def test_one_call_writers_take_keywords_after_their_first_arguments(
    repo: icechunk.Repository,
) -> None:
    session = repo.writable_session("main")
    with pytest.raises(TypeError):
        to_icechunk(cf_dataset(2), session, "g")  # type: ignore[misc]
    with pytest.raises(TypeError):
        store_dask(session, [], [])  # type: ignore[misc]
    assert not session.has_uncommitted_changes
