"""RESULTS.md's Scale section and the scale plots, from scale_results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(results: dict[str, Any], where: Path) -> None:
    raise NotImplementedError
