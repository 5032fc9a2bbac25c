"""A catalogue of wrong requests: every CLI command × each way a request can be wrong.

For each case, against a copy of one demo archive:

- the CLI (typer's runner, in this process) exits non-zero, its stderr is the one line
  ``error: <message>``, and neither stderr nor the log records carry a traceback;
- the same request through the flows in Python raises the typed error (an IcefloeError
  subclass) whose message is exactly the CLI's;
- nothing was created or changed on disk (the whole directory tree, and the branch tip).

A few cases run once more as a real program, where Prefect's own console handler writes
to the real stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import pytest
from typer.testing import CliRunner

from flows import Target, append_flow, backfill_flow, create_flow, modify_flow, region_flow
from flows.cli import _require_branch, _spec_file, app
from flows.sources import parse_source
from flows.spec import init_spec, show_spec
from flows.targets import TargetError, TargetNotFoundError, TargetUnreachableError
from tasks.errors import (
    GroupNotFoundError,
    IcefloeError,
    PlanError,
    RequestError,
    SourceNotFoundError,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

runner = CliRunner()

GRID = {"ny": 3, "nx": 4, "time_chunk": 24}
SOURCE = {"kind": "synthetic", "start": "2020-01-01", "periods": 24, **GRID}
LATER = {**SOURCE, "start": "2020-01-02"}
OUTSIDE = {**SOURCE, "start": "2021-01-01"}
BAD_JSON = '{kind: "synthetic"}'  # unquoted key: what people type first
GAP = {**SOURCE, "start": "2020-01-03"}  # the archive ends on 2020-01-01T23: a day is missing


def drifted(**kwargs: Any) -> dict[str, Any]:
    """The archive's source as a provider that changed something (dtype, units) delivers it."""
    function = "tests.flows.python_sources:drifted"
    return {"kind": "python", "function": function, "kwargs": {**kwargs, "ny": 3, "nx": 4}}


@dataclass(frozen=True)
class Where:
    """The paths and options one case works with (all under the test's own directory)."""

    root: Path
    scheduler: str
    closed_port: int

    @property
    def archive(self) -> str:
        return str(self.root / "archive")

    @property
    def missing(self) -> str:
        return str(self.root / "nope")  # a typo of "archive"

    @property
    def no_files(self) -> str:
        return str(self.root / "incoming" / "era5_*.nc")

    @property
    def unreachable(self) -> dict[str, Any]:
        options = {
            "endpoint_url": f"http://127.0.0.1:{self.closed_port}",
            "allow_http": True,
            "region": "us-east-1",
            "force_path_style": True,
            "max_tries": 1,  # fail at once rather than after ~40 s of retries
        }
        return {"repo": "s3://icefloe/archive", "storage_options": options}

    def target(self, repo: str | dict[str, Any] | None = None) -> Target:
        if isinstance(repo, dict):
            return Target.model_validate(repo)
        return Target(repo=repo or self.archive)


Args = Callable[[Where], list[str]]
Call = Callable[[Where], Any]


@dataclass(frozen=True)
class Case:
    id: str
    cli: Args
    python: Call  # the same request in Python: a flow, or what the CLI calls before one
    error: type[Exception]
    says: str  # a regular expression the message must match
    exit_code: int = 1


def _src(source: dict[str, Any] | str) -> str:
    return source if isinstance(source, str) else json.dumps(source)


def write(command: str, *extra: str, target: str = "archive", source: Any = LATER) -> Args:
    """CLI arguments for a write command against the archive (or another target)."""

    def args(w: Where) -> list[str]:
        where = {
            "archive": w.archive,
            "missing": w.missing,
            "unreachable": json.dumps(w.unreachable),
        }[target]
        given = w.no_files if source == "no-files" else _src(source)
        return [command, "--target", where, "--source", given, "--scheduler-address", w.scheduler]

    return lambda w: [*args(w), *extra]


def read(command: str, *extra: str, target: str = "archive") -> Args:
    """CLI arguments for a command that takes no source (``spec``: its subcommand first)."""

    def args(w: Where) -> list[str]:
        where = {
            "archive": w.archive,
            "missing": w.missing,
            "unreachable": json.dumps(w.unreachable),
        }[target]
        if command == "spec":
            return [command, extra[0], "--target", where, *extra[1:]]
        return [command, "--target", where, *extra]

    return args


def backfill_args(
    *extra: str, start: str = "2020-01-01", end: str = "2020-01-02", **kw: Any
) -> Args:
    return write("backfill", "--start", start, "--end", end, "--freq", "1D", *extra, **kw)


def _files(w: Where) -> dict[str, Any]:
    return {"kind": "files", "paths": [w.no_files]}


def _open(w: Where, repo: Any = None) -> icechunk.Repository:
    return w.target(repo).open_repository()


def _coverage(w: Where, repo: Any = None, group: str | None = None, dim: str = "time") -> Any:
    from flows.cli import _require_dimension, _require_group

    target = w.target(repo)
    session = target.open_repository().readonly_session(branch="main")
    _require_group(session, group, target)
    _require_dimension(session, group, dim)


def _backfill(w: Where, **kw: Any) -> Any:
    params: dict[str, Any] = {
        "target": w.target(),
        "source": SOURCE,
        "start": dt.datetime(2020, 1, 1),
        "end": dt.datetime(2020, 1, 2),
        "freq": "1D",
        "scheduler_address": w.scheduler,
        **kw,
    }
    return backfill_flow(**params)


MISSING_REPO = r"no Icechunk repository at .*nope.*`icefloe create`"
MISSING_GROUP = r"there is no group 'nope'.*`icefloe create`"
UNREACHABLE = r"cannot reach the repository at s3://icefloe/archive"
NO_FILES = r"no file matches FilesSource\.paths .*era5_\*\.nc"

CASES: list[Case] = [
    # -- a missing repository: only create and backfill may make one -----------------------
    *[
        Case(
            f"{mode}-missing-repository",
            write(mode, target="missing"),
            lambda w, flow=flow: flow(w.target(w.missing), LATER, scheduler_address=w.scheduler),
            TargetNotFoundError,
            MISSING_REPO + f"|{mode} writes only into an existing repository",
        )
        for mode, flow in (
            ("modify", modify_flow),
            ("region", region_flow),
        )
    ],
    Case(
        "append-missing-repository",
        write("append", target="missing"),
        lambda w: append_flow(
            w.target(w.missing), LATER, append_dim="time", scheduler_address=w.scheduler
        ),
        TargetNotFoundError,
        r"append writes only into an existing repository; check --target",
    ),
    Case(
        "log-missing-repository",
        read("log", target="missing"),
        lambda w: _open(w, w.missing),
        TargetNotFoundError,
        MISSING_REPO,
    ),
    Case(
        "coverage-missing-repository",
        read("coverage", target="missing"),
        lambda w: _coverage(w, w.missing),
        TargetNotFoundError,
        MISSING_REPO,
    ),
    # -- a branch that does not exist -------------------------------------------------------
    Case(
        "append-missing-branch",
        write("append", "--branch", "nope"),
        lambda w: append_flow(
            Target(repo=w.archive, branch="nope"),
            LATER,
            append_dim="time",
            scheduler_address=w.scheduler,
        ),
        TargetError,
        r"branch 'nope' does not exist in .*\['main'\]",
    ),
    Case(
        "log-missing-branch",
        read("log", "--branch", "nope"),
        lambda w: _require_branch(_open(w), Target(repo=w.archive, branch="nope")),
        TargetError,
        r"branch 'nope' does not exist in .*\['main'\] \(--branch\)",
    ),
    Case(
        "coverage-missing-branch",
        read("coverage", "--branch", "nope"),
        lambda w: _require_branch(_open(w), Target(repo=w.archive, branch="nope")),
        TargetError,
        r"branch 'nope' does not exist in .*\['main'\] \(--branch\)",
    ),
    # -- a missing group: only create and backfill may make one -----------------------------
    Case(
        "append-missing-group",
        write("append", "--group", "nope"),
        lambda w: append_flow(
            w.target(), LATER, append_dim="time", group="nope", scheduler_address=w.scheduler
        ),
        GroupNotFoundError,
        MISSING_GROUP,
    ),
    Case(
        "modify-missing-group",
        write("modify", "--group", "nope"),
        lambda w: modify_flow(w.target(), LATER, group="nope", scheduler_address=w.scheduler),
        GroupNotFoundError,
        MISSING_GROUP,
    ),
    Case(
        "region-missing-group",
        write("region", "--group", "nope", source=SOURCE),
        lambda w: region_flow(w.target(), SOURCE, group="nope", scheduler_address=w.scheduler),
        GroupNotFoundError,
        MISSING_GROUP,
    ),
    Case(
        "coverage-missing-group",
        read("coverage", "--group", "nope"),
        lambda w: _coverage(w, group="nope"),
        GroupNotFoundError,
        r"there is no group 'nope'",
    ),
    # -- a dimension the group does not have ----------------------------------------------
    Case(
        "append-wrong-dimension",
        write("append", "--append-dim", "level"),
        lambda w: append_flow(w.target(), LATER, append_dim="level", scheduler_address=w.scheduler),
        PlanError,
        r"append_dim 'level' is not a dimension",
    ),
    Case(
        "region-wrong-dimension",
        write("region", "--region", '{"level": [0, 24]}', source=SOURCE),
        lambda w: region_flow(
            w.target(), SOURCE, region={"level": (0, 24)}, scheduler_address=w.scheduler
        ),
        PlanError,
        r"region dimension 'level' is not in the store",
    ),
    Case(
        "backfill-wrong-dimension",
        backfill_args("--append-dim", "level", source=SOURCE),
        lambda w: _backfill(w, append_dim="level"),
        PlanError,
        r"cannot write to the root group: it has no dimension 'level' to fill",
    ),
    Case(
        "coverage-wrong-dimension",
        read("coverage", "--append-dim", "level"),
        lambda w: _coverage(w, dim="level"),
        PlanError,
        r"it has no dimension 'level'",
    ),
    # -- labels already stored, and a group that exists ------------------------------------
    Case(
        "append-overlap-without-on-overlap",
        write("append", source=SOURCE),
        lambda w: append_flow(w.target(), SOURCE, append_dim="time", scheduler_address=w.scheduler),
        PlanError,
        r"cannot write to the root group: 24 label\(s\) along 'time' are already in the store"
        r".*on_overlap='skip'",
    ),
    # -- the group's declared spec: holes, drifting sources, structure (docs/spec.md) -------
    Case(
        "append-gap-on-the-step",
        write("append", source=GAP),
        lambda w: append_flow(w.target(), GAP, append_dim="time", scheduler_address=w.scheduler),
        PlanError,
        r"cannot write to the root group: the labels along 'time' leave a gap on its step 'h': "
        r"2020-01-02T00:00:00 … 2020-01-02T23:00:00 \(24 labels\).*on_gap='stop'.*on_gap='fill'",
    ),
    Case(
        "append-units-changed",
        write("append", source=drifted(start="2020-01-02", units="degC")),
        lambda w: append_flow(
            w.target(),
            drifted(start="2020-01-02", units="degC"),
            append_dim="time",
            scheduler_address=w.scheduler,
        ),
        PlanError,
        r"variable 'air_temperature' has units 'degC' but the group's spec declares 'K'",
    ),
    Case(
        "modify-structure-without-update-spec",
        write("modify", source=drifted(dtype="float64")),
        lambda w: modify_flow(w.target(), drifted(dtype="float64"), scheduler_address=w.scheduler),
        PlanError,
        r"variable 'air_temperature' would change the structure the group's spec declares "
        r"\(dtype float32 → float64\); pass update_spec=True \(icefloe modify --update-spec\)",
    ),
    Case(
        "spec-init-group-has-one",
        read("spec", "init"),
        lambda w: init_spec(w.target()),
        PlanError,
        r"the group has a spec already.*icefloe spec init --force",
    ),
    Case(
        "spec-show-missing-repository",
        read("spec", "show", target="missing"),
        lambda w: show_spec(w.target(w.missing)),
        TargetNotFoundError,
        MISSING_REPO,
    ),
    Case(
        "spec-init-missing-file",
        read("spec", "init", "--from", "nope.yaml"),
        lambda w: _spec_file(Path("nope.yaml")),
        RequestError,
        r"^--from nope\.yaml: cannot read the spec \(No such file or directory\)",
        exit_code=2,
    ),
    Case(
        "create-group-exists",
        write("create", source=SOURCE),
        lambda w: create_flow(w.target(), SOURCE, scheduler_address=w.scheduler),
        PlanError,
        r"cannot write to the root group: .*exist",
    ),
    # -- a region whose labels the store does not hold -------------------------------------
    Case(
        "region-labels-outside-the-store",
        write("region", source=OUTSIDE),
        lambda w: region_flow(w.target(), OUTSIDE, scheduler_address=w.scheduler),
        PlanError,
        r"are not in the store",
    ),
    # -- dates in the wrong order, a frequency that is none --------------------------------
    Case(
        "backfill-end-before-start",
        backfill_args(start="2020-01-03", end="2020-01-02", source=SOURCE),
        lambda w: _backfill(w, start=dt.datetime(2020, 1, 3), end=dt.datetime(2020, 1, 2)),
        PlanError,
        r"^backfill end 2020-01-02 00:00:00 is not after its start 2020-01-03 00:00:00",
    ),
    Case(
        "backfill-bad-freq",
        write("backfill", "--start", "2020-01-01", "--end", "2020-01-02", "--freq", "daily"),
        lambda w: _backfill(w, freq="daily"),
        RequestError,
        r"freq 'daily' is not a pandas frequency",
        exit_code=2,
    ),
    # -- files that match nothing ----------------------------------------------------------
    Case(
        "create-files-match-nothing-new-target",
        write("create", target="missing", source="no-files"),
        lambda w: create_flow(w.target(w.missing), _files(w), scheduler_address=w.scheduler),
        SourceNotFoundError,
        NO_FILES,
    ),
    *[
        Case(
            f"{mode}-files-match-nothing",
            write(mode, *extra, source="no-files"),
            call,
            SourceNotFoundError,
            NO_FILES,
        )
        for mode, extra, call in (
            (
                "append",
                (),
                lambda w: append_flow(
                    w.target(), _files(w), append_dim="time", scheduler_address=w.scheduler
                ),
            ),
            (
                "modify",
                (),
                lambda w: modify_flow(w.target(), _files(w), scheduler_address=w.scheduler),
            ),
            (
                "region",
                (),
                lambda w: region_flow(w.target(), _files(w), scheduler_address=w.scheduler),
            ),
        )
    ],
    Case(
        "backfill-files-match-nothing-new-target",
        backfill_args(target="missing", source="no-files"),
        lambda w: _backfill(w, target=w.target(w.missing), source=_files(w)),
        SourceNotFoundError,
        NO_FILES,
    ),
    # -- an object store that does not answer ----------------------------------------------
    *[
        Case(
            f"{mode}-unreachable-store",
            write(mode, *extra, target="unreachable", source=SOURCE),
            call,
            TargetUnreachableError,
            UNREACHABLE,
        )
        for mode, extra, call in (
            (
                "create",
                (),
                lambda w: create_flow(
                    w.target(w.unreachable), SOURCE, scheduler_address=w.scheduler
                ),
            ),
            (
                "append",
                (),
                lambda w: append_flow(
                    w.target(w.unreachable),
                    SOURCE,
                    append_dim="time",
                    scheduler_address=w.scheduler,
                ),
            ),
            (
                "modify",
                (),
                lambda w: modify_flow(
                    w.target(w.unreachable), SOURCE, scheduler_address=w.scheduler
                ),
            ),
            (
                "region",
                (),
                lambda w: region_flow(
                    w.target(w.unreachable), SOURCE, scheduler_address=w.scheduler
                ),
            ),
            (
                "backfill",
                ("--start", "2020-01-01", "--end", "2020-01-02"),
                lambda w: _backfill(w, target=w.target(w.unreachable)),
            ),
        )
    ],
    Case(
        "log-unreachable-store",
        read("log", target="unreachable"),
        lambda w: _open(w, w.unreachable),
        TargetUnreachableError,
        UNREACHABLE,
    ),
    Case(
        "coverage-unreachable-store",
        read("coverage", target="unreachable"),
        lambda w: _coverage(w, w.unreachable),
        TargetUnreachableError,
        UNREACHABLE,
    ),
]

# -- malformed JSON in every option that takes JSON (refused before anything runs) ----------


def _bad_target(w: Where) -> Any:
    from flows.cli import _target

    return _target(BAD_JSON, "main")


BAD_JSON_CASES: list[Case] = [
    *[
        Case(
            f"{command}-source-bad-json",
            (
                write(command, *extra, source=BAD_JSON)
                if command != "serve"
                else lambda w, e=extra: ["serve", "--target", w.archive, "--source", BAD_JSON, *e]
            ),
            lambda w: parse_source(BAD_JSON, name="--source"),
            RequestError,
            r"^--source is not valid JSON \(Expecting property name enclosed in double quotes at "
            r"line 1 column 2\); JSON needs double quotes .* e\.g\. --source '\{\"kind\"",
            exit_code=2,
        )
        for command, extra in (
            ("create", ()),
            ("modify", ()),
            ("append", ()),
            ("region", ()),
            ("backfill", ("--start", "2020-01-01", "--end", "2020-01-02")),
            ("serve", ("--interval", "60")),
        )
    ],
    *[
        Case(
            f"{command}-target-bad-json",
            (
                (lambda w, c=command, e=extra: [c, "--target", BAD_JSON, *e])
                if command in ("log", "coverage", "serve")
                else (
                    lambda w, c=command, e=extra: [
                        c,
                        "--target",
                        BAD_JSON,
                        "--source",
                        _src(SOURCE),
                        *e,
                    ]
                )
            ),
            _bad_target,
            RequestError,
            r"^--target is not valid JSON .* e\.g\. --target '\{\"repo\"",
            exit_code=2,
        )
        for command, extra in (
            ("create", ()),
            ("modify", ()),
            ("append", ()),
            ("region", ()),
            ("backfill", ("--start", "2020-01-01", "--end", "2020-01-02")),
            ("log", ()),
            ("coverage", ()),
            ("serve", ("--source", _src(SOURCE), "--interval", "60")),
        )
    ],
    Case(
        "create-encoding-bad-json",
        write("create", "--encoding", "{air_temperature: {}}", target="missing", source=SOURCE),
        lambda w: __import__("flows.cli", fromlist=["_encoding_option"])._encoding_option(
            "{air_temperature: {}}"
        ),
        RequestError,
        r"^--encoding is not valid JSON .* e\.g\. --encoding '\{\"air_temperature\"",
        exit_code=2,
    ),
    Case(
        "region-region-bad-json",
        write("region", "--region", "{time: [0, 24]}", source=SOURCE),
        lambda w: __import__("flows.cli", fromlist=["_region_option"])._region_option(
            "{time: [0, 24]}"
        ),
        RequestError,
        r"^--region is not valid JSON .* e\.g\. --region '\{\"time\": \[24, 48\]\}'",
        exit_code=2,
    ),
    Case(
        "region-region-wrong-shape",
        write("region", "--region", '{"time": [0]}', source=SOURCE),
        lambda w: __import__("flows.cli", fromlist=["_region_option"])._region_option(
            '{"time": [0]}'
        ),
        RequestError,
        r"^--region is not valid: 'time' must be \[start, stop\] \(two integers\) or \"auto\", "
        r"not \[0\]",
        exit_code=2,
    ),
    Case(
        "append-source-unknown-kind",
        write("append", source='{"kind": "synthetik"}'),
        lambda w: parse_source('{"kind": "synthetik"}', name="--source"),
        RequestError,
        r"^--source is not valid: 'kind' 'synthetik' is not one of 'files', 'zarr'",
        exit_code=2,
    ),
]


# -- the machinery ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_archive(
    tmp_path_factory: pytest.TempPathFactory, scheduler_address: str, prefect_harness: str
) -> Path:
    """One archive, created once: 24 hourly labels of synthetic weather at the root group."""
    path = tmp_path_factory.mktemp("demo") / "archive"
    create_flow(Target(repo=str(path)), SOURCE, scheduler_address=scheduler_address)
    return path


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def where(tmp_path: Path, demo_archive: Path, scheduler_address: str, closed_port: int) -> Where:
    shutil.copytree(demo_archive, tmp_path / "archive")
    return Where(tmp_path, scheduler_address, closed_port)


def disk_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` with its size and modification time.

    Except the metadata lock's files (flows/locks.py): a run that plans under the group's
    lock needs its flock file, which stays, empty, for every later run of that group.
    """
    state = {}
    for path in sorted(root.rglob("*")):
        if ".icefloe-locks" in path.parts:
            continue
        info = path.stat()
        state[str(path.relative_to(root))] = (
            info.st_size if path.is_file() else 0,
            info.st_mtime_ns,
        )
    return state


def branch_tip(w: Where) -> tuple[str, frozenset[str]]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(w.archive))
    return repo.lookup_branch("main"), frozenset(repo.list_branches())


class _Records(logging.Handler):
    """Every log record, formatted as a console would (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _check(case: Case, where: Where, log_records: _Records) -> None:
    before, tip_before = disk_state(where.root), branch_tip(where)

    result = runner.invoke(app, case.cli(where))

    assert result.exit_code == case.exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: "), result.stderr
    message = error_lines[0].removeprefix("error: ")
    assert re.search(case.says, message), message
    assert "Traceback" not in result.output
    assert "validation error for" not in message  # pydantic's words, not the user's
    assert not any("Traceback" in line for line in log_records.lines), "\n".join(log_records.lines)
    # logged once at most (the flow run's final state), never as an ERROR with its echoes
    assert sum(message[:60] in line for line in log_records.lines) <= 1, log_records.lines
    assert disk_state(where.root) == before
    assert branch_tip(where) == tip_before

    with pytest.raises(case.error) as raised:
        case.python(where)
    assert isinstance(raised.value, IcefloeError)
    assert str(raised.value) == message
    assert disk_state(where.root) == before
    assert branch_tip(where) == tip_before
    assert not any("Traceback" in line for line in log_records.lines), "\n".join(log_records.lines)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_refused_request_is_one_line_and_changes_nothing(
    case: Case, where: Where, log_records: _Records
) -> None:
    _check(case, where, log_records)


@pytest.mark.parametrize("case", BAD_JSON_CASES, ids=[c.id for c in BAD_JSON_CASES])
def test_malformed_json_is_explained_in_the_options_terms(
    case: Case, where: Where, log_records: _Records
) -> None:
    _check(case, where, log_records)


def test_verbose_shows_the_traceback_of_a_refusal(where: Where) -> None:
    result = runner.invoke(app, ["--verbose", *write("append", target="missing")(where)])

    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: no Icechunk repository")


def test_the_flow_run_ends_failed_with_the_message(where: Where) -> None:
    """What the Prefect UI shows: state Failed, its message the refusal's."""
    state = append_flow(
        where.target(),
        SOURCE,
        append_dim="time",
        scheduler_address=where.scheduler,
        return_state=True,
    )

    assert state.is_failed()
    assert state.message is not None
    assert state.message.startswith("cannot write to the root group: 24 label(s) along 'time'")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(write("append", target="missing"), id="missing-repository"),
        pytest.param(write("append", source=SOURCE), id="overlap"),
        pytest.param(write("region", source=BAD_JSON), id="bad-json"),
    ],
)
def test_as_a_program_stderr_has_no_traceback(
    args: Args, where: Where, prefect_harness: str
) -> None:
    """The installed program, where Prefect's console handler writes to the real stderr."""
    program = Path(sys.executable).with_name("icefloe")
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "COLUMNS": "80"}
    before = disk_state(where.root)

    done = subprocess.run(
        [str(program), *args(where)], capture_output=True, text=True, timeout=120, env=env
    )

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "ERROR" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    # besides it, only Prefect's INFO lines about the run (no icechunk advisories either)
    others = [line for line in done.stderr.splitlines() if line.strip() and line not in errors]
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d+ \| INFO ", line) for line in others), done.stderr
    message = errors[0].removeprefix("error: ")
    assert sum(message[:60] in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert disk_state(where.root) == before


# -- the error types themselves -----------------------------------------------------------


def test_plan_errors_name_a_group_only_when_they_are_about_one() -> None:
    assert str(PlanError("x is wrong")) == "x is wrong"
    assert str(PlanError("x is wrong", group=None)) == "cannot write to the root group: x is wrong"
    assert (
        str(PlanError(["a", "b"], group="g"))
        == "cannot write to group 'g', 2 problems:\n  - a\n  - b"
    )
    assert str(PlanError(["a", "b"])) == "2 problems:\n  - a\n  - b"


def test_plan_errors_survive_pickling_unchanged() -> None:
    """Prefect pickles a failed run's exception when it persists results."""
    import pickle

    for err in (PlanError("x", group=None), GroupNotFoundError("y", group="g"), PlanError("z")):
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), str(back), back.problems, back.group) == (
            type(err),
            str(err),
            err.problems,
            err.group,
        )


def test_refusals_are_the_errors_that_say_the_request_is_wrong() -> None:
    from tasks.errors import PhaseOrderError, VerificationError, is_refusal
    from tasks.phases import is_transient

    refused = [
        PlanError("x"),
        GroupNotFoundError("x", group="g"),
        RequestError("x"),
        SourceNotFoundError("x"),
        TargetNotFoundError("x"),
        TargetUnreachableError("x"),
    ]
    assert all(is_refusal(err) and not is_transient(err) for err in refused)
    assert not is_refusal(VerificationError(["x"]))  # icefloe's own fault: keeps its traceback
    assert not is_refusal(PhaseOrderError("x"))
    assert not is_refusal(ValueError("x"))
