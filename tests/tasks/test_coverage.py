"""Coverage: labels with data, gaps after an extension that wrote no values, per label."""

from __future__ import annotations

import itertools

import numpy as np

from tasks.coverage import coverage
from tests.cf_datasets import cf_dataset
from tests.tasks.helpers import write


def test_an_extended_axis_shows_its_unwritten_labels_as_a_gap(repo, tmp_path):
    ds = cf_dataset(12)
    write(
        repo,
        ds.isel(time=slice(0, 4)),
        lambda w: w.for_create_or_overwrite(
            group="g", encoding={n: {"chunks": (2, 3, 4)} for n in ("tas", "pr", "tas_packed")}
        ),
    )
    # labels only: the arrays grow, their new chunks stay absent
    labels_only = ds.isel(time=slice(4, 12))[["time_bnds"]]
    write(repo, labels_only, lambda w: w.for_append(group="g", fill_missing=True))
    # a region fills two labels in the middle, half of one chunk
    patch = ds.isel(time=slice(7, 9))[["tas", "pr", "tas_packed"]].drop_vars("height")
    write(repo, patch, lambda w: w.for_region(group="g"))

    found = coverage(repo.readonly_session("main"), "g")

    assert found.present.tolist() == [True] * 4 + [False] * 3 + [True] * 2 + [False] * 3
    assert [(g.count, str(g.first)[:10]) for g in found.gaps()] == [
        (3, "2000-01-05"),
        (3, "2000-01-10"),
    ]
    assert found.missing_between(np.datetime64("2000-01-05"), np.datetime64("2000-01-07"))
    assert not found.missing_between(np.datetime64("2000-01-01"), np.datetime64("2000-01-05"))
    assert "6 labels" not in str(found)
    assert "| 1 | 2000-01-05" in found.markdown()
    found.plot(str(tmp_path / "coverage.png"))
    assert (tmp_path / "coverage.png").stat().st_size > 1000


def test_missing_in_answers_missing_between_for_every_window_at_once():
    import pandas as pd

    from tasks.coverage import Coverage

    labels = pd.date_range("2000-01-01", periods=30, freq="D")
    present = np.ones(30, dtype=bool)
    present[[3, 4, 17, 29]] = False
    found = Coverage(None, "time", labels, present)
    edges = pd.date_range("1999-12-29", periods=14, freq="3D")  # some before and after
    windows = [(a, b) for a, b in itertools.pairwise(edges)]
    windows.append((pd.Timestamp("2000-01-10"), pd.Timestamp("2000-01-10")))  # empty

    expected = [found.missing_between(a, b) for a, b in windows]
    assert found.missing_in(windows).tolist() == expected
    assert any(expected)
    assert not all(expected)
