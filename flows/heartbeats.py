"""Flow-run heartbeats that no longer hold a finished synchronous run for up to a second.

Prefect sends a flow run's heartbeats from a thread that sleeps in one-second steps
between them, and a synchronous flow joins that thread when its run ends: every
synchronous flow run (a CLI command, a script's ``create_flow(...)``, a deployment's run)
waited out the thread's current sleep, on average half a second, after its work was done
(measured: a trivial flow took 1.08 s, 0.57 s without heartbeats; FIELD-NOTES). Prefect's
asynchronous engine does not join (``join_on_exit=False``): the thread notices the stop
at its next step and ends by itself, and being a daemon it never holds up the process.

``install()`` makes the synchronous engine do the same, through that very parameter of
Prefect's own ``prefect.flow_engine._send_heartbeats`` (which the engine looks up at each
run). Heartbeats are still sent exactly as before, from the start of the run every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (deployments/zombies.py relies on them),
and none is sent after the run ended: the thread checks the stop before each one.
Only for the Prefect series checked here; with another, Prefect's behaviour stays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import prefect
import prefect.flow_engine

__all__ = ["install", "installed"]

# Checked: prefect.flow_engine._send_heartbeats(engine, join_on_exit=True) in 3.8.8, 3.9.1.
_CHECKED_SERIES = ("3.8.", "3.9.")
_prefect_send_heartbeats = prefect.flow_engine._send_heartbeats


@contextlib.contextmanager
def _send_heartbeats_without_join(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    del join_on_exit  # the thread ends by itself within a second of the run's end
    with _prefect_send_heartbeats(engine, join_on_exit=False):
        yield


def install() -> None:
    """Let synchronous flow runs end without waiting for their heartbeat thread."""
    if prefect.__version__.startswith(_CHECKED_SERIES):
        prefect.flow_engine._send_heartbeats = _send_heartbeats_without_join


def installed() -> bool:
    return prefect.flow_engine._send_heartbeats is _send_heartbeats_without_join
