"""No orphans: a watchdog process that ends what a flow process started once it is gone.

A flow process starts processes it cannot always stop itself: Prefect's temporary API
server (a uvicorn subprocess, about 220 MB, started when no ``PREFECT_API_URL`` is set)
and the LocalCluster's worker processes. When the flow process is SIGKILLed (OOM killer,
``kill -9``, a pod's grace period running out) no ``atexit`` or ``finally`` runs, and the
server kept running, orphaned, one per killed run (FIELD-NOTES).

``ensure_lifeline()`` starts, once per process, a small watchdog (``python -I
flows/lifeline.py PID``, about 15 MB) holding the read end of a pipe whose write end only the flow
process holds. Every half second it records the flow process's descendants; when the
pipe reaches EOF or its parent changes (the flow process is gone, however it died), it
sends SIGTERM to every recorded process still running (matched by creation time, since
pids are reused), SIGKILL to those left after a grace period, and exits. A clean exit
has already stopped them, so then it finds nothing to do.

Set ``ICEFLOE_LIFELINE=0`` to do without it (e.g. where a supervisor kills the whole
process group or container anyway).

Cancellation: a flow run that a worker or ``serve`` started is stopped by them when it
is cancelled (SIGTERM, which Prefect turns into a Cancelled run). A flow called directly
(a script, a notebook, cron) has nobody to do that: ``ensure_lifeline()`` also watches
the current run's state from a thread and, once it is CANCELLING, stops the run the same
way (and, as a runner, kills the process if it has not exited 5 s later; not in an
interactive session), so ``prefect flow-run cancel`` and the UI's Cancel work for those
runs too.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import select
import signal
import subprocess
import sys
import threading
import time

import psutil

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "CANCEL_POLL_SECONDS",
    "LIFELINE_ENV",
    "ensure_lifeline",
    "start_watchdog",
]

LIFELINE_ENV = "ICEFLOE_LIFELINE"
POLL_SECONDS = 0.5
GRACE_SECONDS = 3.0
# How often a directly called run asks the API whether it was cancelled: one small GET,
# which the server answers from its database (once a second, as many requests as all of
# a bulk write's other ones together).
CANCEL_POLL_SECONDS = 2.0
# As a runner does: a cancelled process still running this long after its SIGTERM is
# killed (closing a busy LocalCluster alone waits 4 s, and exiting the interpreter drains
# Prefect's queues and stops its temporary server); the watchdog cleans up after it.
CANCEL_GRACE_SECONDS = 5.0
_watched_runs: set[str] = set()
_cancel_requested = threading.Event()  # a SIGTERM of ours: record Cancelled, not Crashed

_lock = threading.Lock()
_started_for: int | None = None  # the pid that started it: a forked child needs its own
_process: subprocess.Popen[bytes] | None = None


def _disabled() -> bool:
    return os.environ.get(LIFELINE_ENV, "1").lower() in ("0", "false", "no", "off")


def ensure_lifeline() -> None:
    """Start this process's watchdog if it is not running yet (cheap to call often)."""
    if _disabled():
        return
    _watch_cancellation()
    _arm_stop_deadline()
    start_watchdog()


def start_watchdog() -> None:
    """Start the watchdog process alone (the daemon's spare does it before a command
    arrives); ``ensure_lifeline`` then finds it running."""
    global _started_for, _process
    if _disabled():
        return
    with _lock:
        if _started_for == os.getpid() and _process is not None and _process.poll() is None:
            return
        _process = subprocess.Popen(
            # the file itself, isolated (-I): importing the flows package would cost seconds
            # and a few hundred MB for a process that needs psutil only
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # its own session: a Ctrl-C or a signal to the flow's process group must not
            # end the watchdog before the processes it watches
            start_new_session=True,
        )
        _started_for = os.getpid()
        # It answers once it has recorded the descendants that exist now (the temporary
        # server may already run): a kill right after this returns is still covered.
        assert _process.stdout is not None
        ready, _, _ = select.select([_process.stdout], [], [], 10.0)
        if ready:
            _process.stdout.read(1)


def _interactive() -> bool:
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or "IPython" in sys.modules


def _arm_stop_deadline() -> None:
    """Make a SIGTERM end the process within CANCEL_GRACE_SECONDS, as a runner would.

    Prefect's handler (installed for the run) turns SIGTERM into TerminationSignal and
    the run unwinds, but closing a busy LocalCluster alone waits 4 s and a loaded host
    took longer than a pod's patience. Wrapping that handler arms a timer that SIGKILLs
    the process if it is still there after the grace period; the watchdog then ends its
    children, and nothing of the run was published either way.
    """
    if threading.current_thread() is not threading.main_thread() or _interactive():
        return
    current = signal.getsignal(signal.SIGTERM)
    if not callable(current) or getattr(current, "_icefloe_deadline", False):
        return

    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run_id = context.flow_run.id if context is not None and context.flow_run else None

    # Threads start with an empty context: without a copy of this one, their Prefect client
    # would not see settings made in it (a temporary_settings block, a test harness) and
    # would start a temporary server of its own.
    context_copy = contextvars.copy_context()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(
            target=context_copy.run,
            args=(_kill_after_grace, run_id),
            name="icefloe-stop",
            daemon=True,
        ).start()
        current(signum, frame)  # type: ignore[arg-type]

    stop._icefloe_deadline = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, stop)


def _kill_after_grace(run_id: object) -> None:
    time.sleep(CANCEL_GRACE_SECONDS)
    if run_id is not None:
        # the outcome the engine had no time to record; at most 2 s more
        recorder = threading.Thread(
            target=contextvars.copy_context().run, args=(_record_crash, run_id), daemon=True
        )
        recorder.start()
        recorder.join(2.0)
    os.kill(os.getpid(), signal.SIGKILL)


def _record_crash(run_id: object) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed

    outcome = (
        Cancelled(message="Flow run was cancelled (its process was stopped).")
        if _cancel_requested.is_set()
        else Crashed(message="Terminated (SIGTERM); the branch was not changed.")
    )
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
        if state is None or not state.is_final():
            client.set_flow_run_state(run_id, outcome, force=True)  # type: ignore[arg-type]


def _watch_cancellation() -> None:
    """Stop the current flow run when it is cancelled, if nobody else will (see above)."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        return  # started by a runner or worker: they deliver cancellation themselves
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run_id = context.flow_run.id
    with _lock:
        if str(run_id) in _watched_runs:
            return
        _watched_runs.add(str(run_id))
    # in a copy of this context: the thread's Prefect client must see this run's settings
    threading.Thread(
        target=contextvars.copy_context().run,
        args=(_cancel_when_cancelling, run_id),
        name="icefloe-cancel-watch",
        daemon=True,
    ).start()


def _cancel_when_cancelling(run_id: object) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            time.sleep(CANCEL_POLL_SECONDS)
            try:
                state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
            except Exception:  # the API hiccupped: ask again next time
                continue
            if state is None:
                continue
            if state.is_final():
                return
            if state.is_cancelling():
                break
    try:
        # What a runner's cancel tells the engine before its SIGTERM: the run then ends
        # Cancelled, not Crashed. Private in Prefect 3.8 and 3.9; without it the run is Crashed.
        from prefect._internal.control_listener import _set_intent

        _set_intent("cancel")
    except ImportError:
        pass
    _cancel_requested.set()
    # SIGTERM, not an exception in this thread: only a signal interrupts the main
    # thread's blocking wait for the cluster, and Prefect turns it into TerminationSignal,
    # which unwinds the run: its session discarded, its lock released, its cluster closed.
    os.kill(os.getpid(), signal.SIGTERM)
    if _interactive():
        return  # a notebook or a REPL: the run is stopped, the session lives on
    time.sleep(CANCEL_GRACE_SECONDS)
    # Still here: record the outcome the engine had no time to, then end it as a runner
    # would. The branch is unchanged, a re-run resumes, the watchdog ends the children.
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
        if state is None or not state.is_final():
            client.set_flow_run_state(
                run_id,  # type: ignore[arg-type]
                Cancelled(message="Flow run was cancelled (its process was stopped)."),
                force=True,
            )
    os.kill(os.getpid(), signal.SIGKILL)


def _descendants(parent: psutil.Process) -> dict[int, float]:
    found: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[child.pid] = child.create_time()
    found.pop(os.getpid(), None)
    return found


def _still_ours(pid: int, created: float) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        if abs(process.create_time() - created) < 0.01 and process.status() != "zombie":
            return process
    return None


def _end(recorded: dict[int, float]) -> None:
    alive = [p for pid, created in recorded.items() if (p := _still_ours(pid, created))]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=GRACE_SECONDS)


def watch(parent_pid: int) -> None:
    """The watchdog's loop: record ``parent_pid``'s descendants until it is gone, then end them."""
    # The flow process handles these; the watchdog outlives it to clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        return
    recorded = _descendants(parent)
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), b"R")
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([stdin], [], [], POLL_SECONDS)
        if readable and not os.read(stdin, 64):
            break  # EOF: the flow process closed its end by exiting
        if os.getppid() != parent_pid or not parent.is_running():
            break
        # A process that ended is forgotten: its pid may come back as someone else's.
        recorded = {pid: t for pid, t in recorded.items() if _still_ours(pid, t)}
        recorded.update(_descendants(parent))
    # The parent's last moments may have started more: its orphans still carry its pid
    # nowhere, so only what was recorded is ended.
    time.sleep(0.1)
    _end(recorded)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
