"""The benchmark scripts run end to end on tiny data (``--smoke``), so they cannot rot.

Uses the session's Prefect API and 2-process cluster instead of starting its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import LocalCluster

from benchmarks import run
from benchmarks.report import HEADINGS

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_smoke_benchmark_writes_every_section_and_the_plot(
    tmp_path: Path, prefect_harness: str, local_cluster: LocalCluster
) -> None:
    out = tmp_path / "bench" / "RESULTS.md"

    code = run.main(
        [
            "--smoke",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--api-url",
            prefect_harness,
            "--scheduler-address",
            str(local_cluster.scheduler_address),
        ]
    )

    assert code == 0
    text = out.read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    assert "Smoke mode" in text
    results = json.loads((out.parent / "results.json").read_text())
    for section in run.SECTIONS:
        assert section in results, section
    # every measurement ran (the backfill may be reported as not measured while it is young)
    for section in ("bulk", "small", "demo", "appends", "scaling", "resume"):
        assert not results[section].get("skipped"), (section, results[section])
    assert results["resume"]["batches_rewritten"] == [1]
    # every timed run carries the machine's conditions: load before and after, other work
    for row in results["bulk"]["rows"] + results["small"]["rows"] + results["demo"]["rows"]:
        for conditions in row["seconds"]["conditions"]:
            assert len(conditions["load_before"]) == len(conditions["load_after"]) == 3
            assert conditions["others_during"] >= 0
    assert results["demo"]["noisy_lines"] == []
    png = (out.parent / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000
