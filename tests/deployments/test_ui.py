"""The Prefect UI as an operator sees it, in a real browser (Debian's chromium, headless).

Against ``prefect server start`` (its UI on) and ``icefloe serve``: the write and backfill
run forms show typed, described fields for target and source (the write form in the
newer /v2 UI too); a run submitted from the
write form is named after what it does, tagged, and leaves its summary artifact; a
scheduled append leaves the coverage artifacts. Screenshots go to docs/ui/ (the README
shows them).

The browser is required: ``.ci/run`` installs chromium when it is missing, and without it
this test fails saying so, it does not skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import icechunk
import pandas as pd
import pytest
from distributed import LocalCluster

from tests.conftest import read_back, running_prefect_server
from tests.deployments.conftest import served, stop, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("ICEFLOE_CHROMIUM", "/usr/bin/chromium")
# what works headless here: no sandbox (root in a container), no GPU, no QUIC, and nothing
# that phones home; playwright adds --headless and a fresh --user-data-dir of its own
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's pictures are refreshed on purpose (ICEFLOE_UI_SCREENSHOTS=docs), not by every
# test run: that would leave each developer's working tree changed.
SCREENSHOTS = (
    Path(__file__).parents[2] / "docs" / "ui"
    if os.environ.get("ICEFLOE_UI_SCREENSHOTS") == "docs"
    else Path(tempfile.gettempdir()) / "icefloe-ui-screenshots"
)
FORM_PROBLEMS = ("is a const and cannot be changed", 'Property is type "None"')


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``prefect server start`` of this module's own, its UI on: the base URL.

    Not the suite's shared server: the deployment tests before this one serve the same
    deployment names there, and their scheduled runs would be read as this test's."""
    with running_prefect_server(tmp_path_factory.mktemp("ui-prefect-home")) as url:
        yield url.removesuffix("/api")


@pytest.fixture(scope="module")
def serving(
    ui_server: str, local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """icefloe serve for an archive named ``live``; its first run starts 2 hours ago."""
    home = tmp_path_factory.mktemp("ui-served")
    now = pd.Timestamp.now("UTC").tz_localize(None).floor("h")
    source = {"kind": "synthetic", "start": str(now - pd.Timedelta(hours=5)), "freq": "1h"}
    source |= {"ny": 3, "nx": 4}
    args = ["--target", str(home / "live"), "--source", json.dumps(source)]
    args += ["--interval", "3600", "--start", str(now - pd.Timedelta(hours=2))]
    # the suite's cluster: a LocalCluster per run would cost more than the run itself
    args += ["--scheduler-address", local_cluster.scheduler_address]
    process = served(args, f"{ui_server}/api", home / "serve.log")
    try:
        wait_until(lambda: len(_deployments(ui_server)) == 5, 120, "icefloe serve to register")
        yield {"home": home, "log": home / "serve.log", "process": process}
    finally:
        stop(process)


def _deployments(base: str) -> dict[str, str]:
    found = httpx.post(f"{base}/api/deployments/filter", json={}, timeout=10).json()
    return {d["name"]: d["id"] for d in found}


def _runs(base: str, deployment_id: str) -> list[dict[str, Any]]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_DESC"}
    return httpx.post(f"{base}/api/flow_runs/filter", json=body, timeout=10).json()


def _finished(base: str, run_id: str) -> dict[str, Any] | None:
    run = httpx.get(f"{base}/api/flow_runs/{run_id}", timeout=10).json()
    return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"no chromium at {CHROMIUM}: install it (apt-get install -y chromium, as scripts/setup.sh --tests "
            "does) or point ICEFLOE_CHROMIUM at one; the UI test needs a real browser"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _property(page: Any, label: str) -> Any:
    """The form field labelled ``label`` (innermost, when forms nest)."""
    name = re.compile(rf"^{re.escape(label)}( \(Optional\))?$")
    return (
        page.locator("div.schema-form-property")
        .filter(has=page.locator("span.schema-form-property__label", has_text=name))
        .last
    )


def _check_form(page: Any, expected: dict[str, str]) -> None:
    """Every ``label: description`` pair is shown, and none of the old unrenderable shapes."""
    text = page.inner_text("body")
    for label, description in expected.items():
        field = _property(page, label)
        assert field.count() == 1, f"no form field {label!r}"
        assert description in field.inner_text(), f"{label!r} lacks its description"
    for problem in FORM_PROBLEMS:
        assert problem not in text


TARGET_AND_SOURCE = {
    "target": "The repository (a path, or a file://",
    "Repo": "The Icechunk repository: a local path",
    "Branch": "The branch to read from and commit to.",
    "source": "Where the data comes from: files, zarr, icechunk, python or synthetic.",
    "Start": "The first time label (ISO 8601)",
    "Freq": "Spacing of the time labels",
}


def test_the_ui_shows_typed_forms_and_named_runs_with_their_artifacts(
    ui_server: str, serving: dict[str, Any], browser: Any
) -> None:
    started = time.monotonic()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ids = _deployments(ui_server)
    # serve said what the first scheduled run will do before it did it (--start honoured)
    log = serving["log"].read_text()
    assert "the first run creates the group and writes 3 labels" in log, log
    assert "--resource-id icefloe.archive.live" in log, log
    # a scheduled append now (the interval's first run is an hour away): the coverage
    scheduled = httpx.post(
        f"{ui_server}/api/deployments/{ids['append-scheduled']}/create_flow_run",
        json={},
        timeout=10,
    ).json()

    # tall enough that a screenshot shows source's tabs and fields below target
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{ui_server}/deployments/deployment/{ids['write']}/run")
    page.get_by_text("Synthetic weather").first.wait_for(timeout=60_000)
    for kind in ("Files", "Zarr", "Icechunk", "Python function", "Synthetic weather"):
        assert page.get_by_text(kind, exact=True).count() >= 1, f"no source tab {kind!r}"
    _check_form(
        page,
        {
            **TARGET_AND_SOURCE,
            "mode": "create (the group must not exist)",
            "region": "region only:",
            "group": "The group inside the repository",
        },
    )
    assert page.get_by_text("auto: placed by the source's labels").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "write-form.png"))

    # the newer UI (served under /v2) renders the same schema as the same fields
    page.goto(f"{ui_server}/v2/deployments/deployment/{ids['write']}/run")
    page.get_by_text("Synthetic weather").first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    for expected in (*TARGET_AND_SOURCE.values(), "Files", "Zarr", "Python function"):
        assert expected in text, f"the V2 form lacks {expected!r}"
    assert not [problem for problem in FORM_PROBLEMS if problem in text]
    page.goto(f"{ui_server}/deployments/deployment/{ids['write']}/run")
    page.get_by_text("Synthetic weather").first.wait_for(timeout=60_000)

    # the scheduled append creates the archive first: a create racing the archive's very
    # first commit would conflict at its root group
    append = wait_until(lambda: _finished(ui_server, scheduled["id"]), 150, "the append", every=1)
    assert append["state_type"] == "COMPLETED", append["state"]
    live = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(serving["home"] / "live"))
    )
    assert read_back(live).sizes["time"] == 3  # from --start, not from the source's start

    # a run from the form: create the group "ui" of the served archive
    mode = _property(page, "mode").locator("button.p-select-button__control")
    mode.focus()
    mode.press("ArrowDown")  # opens the options (a click does not, headless)
    page.locator("[role=option]").filter(has_text=re.compile("^create$")).click()
    _property(page, "group").locator("textarea").fill("ui")
    page.get_by_role("button", name="Submit").click()
    try:  # submitted, the UI goes from the form (…/run) to the deployment's page
        page.wait_for_url(re.compile(r"/deployments/deployment/[^/?]+(\?.*)?$"), timeout=30_000)
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / "failed-submit.png"))
        raise
    (submitted,) = wait_until(lambda: _runs(ui_server, ids["write"]), 30, "the submitted run")
    run = wait_until(lambda: _finished(ui_server, submitted["id"]), 150, "the write run", every=1)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"] == "create live/ui"
    assert {"icefloe", "archive:live", "group:ui", "mode:create"} <= set(run["tags"])

    page.goto(f"{ui_server}/runs/flow-run/{run['id']}")
    page.get_by_text("create live/ui").first.wait_for(timeout=30_000)
    for tag in ("archive:live", "group:ui", "mode:create"):
        assert page.get_by_text(tag, exact=True).count() >= 1, f"tag {tag} not shown"
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text(re.compile("icefloe-summary-live-ui")).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "write-run.png"))

    page.goto(f"{ui_server}/deployments/deployment/{ids['backfill']}/run")
    page.get_by_text("Synthetic weather").first.wait_for(timeout=60_000)
    _check_form(
        page,
        {
            **TARGET_AND_SOURCE,
            "start": "The first time to fill.",
            "end": "The time to fill up to (not included).",
            "freq": "The length of one window",
        },
    )
    assert page.get_by_text("Select date and time").count() == 2  # date pickers
    _property(page, "source").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "backfill-form.png"))

    assert append["name"].startswith("append live → ")
    page.goto(f"{ui_server}/runs/flow-run/{append['id']}")
    page.get_by_text(append["name"]).first.wait_for(timeout=30_000)
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text(re.compile("icefloe-coverage-live")).first.wait_for(timeout=30_000)
    assert page.get_by_text(re.compile("icefloe-coverage-plot-live")).count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "scheduled-run.png"))
    page.close()
    print(f"UI checks took {time.monotonic() - started:.0f} s after the servers were up")
