"""A process serving icefloe's deployments (the ``prefect_server`` fixture is the suite's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, wait_until

__all__ = ["free_port", "served", "stop", "wait_until"]


def served(args: list[str], api_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``icefloe serve ...`` as its own process against ``api_url``."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("icefloe")), "serve", *args],
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
