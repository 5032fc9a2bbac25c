"""Refused requests end a run as one clear message: Failed, no traceback, no retry.

A request icefloe refuses (``tasks.errors.is_refusal``: a PlanError, a missing target or
group, a source that matches nothing, a malformed option) is not a crash. Prefect would
log it as one: the failing task logs it with a traceback, the flow logs it again with
another, and the flow run's state message is "Flow run encountered an exception:
PlanError: ...". Here

- ``refusing`` wraps a flow function so that a refusal ends the run with
  ``Failed(message=<the message>)``: the Prefect UI shows exactly the message, and the
  caller of the flow still gets the typed exception raised (it is the state's data);
- ``RefusalLogFilter`` (installed on Prefect's run loggers when this module is imported)
  drops the traceback records of refusals and the failed task's echo of them, so the
  run's log says it once, in the flow's final "Finished in state Failed('...')" line;
- ``quiet_console`` lets the CLI, which prints the refusal itself as one line, drop that
  final line from the console too (the API, and so the UI, keeps it).

Unexpected errors are left alone: they keep Prefect's tracebacks.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, get_type_hints

from prefect.context import FlowRunContext
from prefect.states import Failed, State

from tasks.errors import is_refusal

__all__ = ["RefusalLogFilter", "install_log_filter", "quiet_console", "refusing"]

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_FINISHED = "Finished in state"

# Run ids (flow and task runs, as strings) that ended in a refusal in this process. Bounded
# in practice by the runs a process makes; a long-lived worker forgets nothing it needs.
_refused: set[str] = set()
_refused_lock = threading.Lock()


def _remember(run_id: object) -> None:
    if run_id is not None:
        with _refused_lock:
            _refused.add(str(run_id))


def _was_refused(run_id: object) -> bool:
    return run_id is not None and str(run_id) in _refused


def refusing[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` (a flow's function) returning ``Failed(message=str(err))`` on a refusal.

    Prefect raises the state's data, the original exception, to whoever called the flow,
    so Python callers and parent flows still catch PlanError and friends. Retries are not
    a question: a flow that returns a Failed state is not re-run for it unless the flow
    sets ``retries``, which icefloe's flows do not.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_refusal(err):
                raise
            context = FlowRunContext.get()
            if context is not None and context.flow_run is not None:
                _remember(context.flow_run.id)
            state: State[Any] = Failed(message=str(err), data=err)
            return state  # type: ignore[return-value]  # Prefect turns the state into the run's

    # Prefect builds the parameter model from the signature; resolve string annotations
    # (``from __future__ import annotations``) in ``fn``'s module, not this one.
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    wrapper.__annotations__ = get_type_hints(fn, include_extras=True)
    return wrapper


class RefusalLogFilter(logging.Filter):
    """Drops the traceback records of refusals on Prefect's run loggers (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info:
            error = exc_info[1]
            if error is None:
                # Prefect logs a failed *state* with exc_info=True outside any except
                # block, which prints a meaningless "NoneType: None".
                record.exc_info = None
                record.exc_text = None
            elif is_refusal(error):
                _remember(getattr(record, "task_run_id", None))
                return False
        task_run = getattr(record, "task_run_id", None)
        if task_run is not None and _was_refused(task_run):
            # the task's "Finished in state Failed(...)" repeats what the flow says last
            return not record.getMessage().startswith(_FINISHED)
        return True


class _ConsoleFilter(logging.Filter):
    """On a console handler: drop a refused flow run's last line, which the CLI prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_run_id", None) is not None:
            return True
        if not _was_refused(getattr(record, "flow_run_id", None)):
            return True
        return not record.getMessage().startswith(_FINISHED)


_log_filter = RefusalLogFilter()


def install_log_filter() -> None:
    """Put the filter on Prefect's run loggers (idempotent; loggers keep it across
    Prefect's own logging set-up, which replaces handlers but not logger filters)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _log_filter not in logger.filters:
            logger.addFilter(_log_filter)


@contextmanager
def quiet_console() -> Iterator[None]:
    """While inside: console handlers omit the final state line of refused flow runs."""
    console_filter = _ConsoleFilter()
    handlers = [
        handler
        for logger in (logging.getLogger(), logging.getLogger("prefect"))
        for handler in logger.handlers
        if type(handler).__name__ == "PrefectConsoleHandler"
    ]
    for handler in handlers:
        handler.addFilter(console_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console_filter)


install_log_filter()
