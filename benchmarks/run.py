"""icefloe next to what a user would otherwise run, in one run, as ratios.

    python -m benchmarks.run [--smoke] [--before main] [--out benchmarks/RESULTS.md]

Starts ``prefect server start`` on a new database and a dask LocalCluster of two worker
processes (or uses ``--api-url`` / ``--scheduler-address``), runs the measurements, and
writes RESULTS.md, results.png and results.json (the raw numbers) beside ``--out``.
``--smoke`` runs every measurement on tiny data once, in seconds (the test suite does).
``--before REF`` also runs the command-line measurements (a small append, the demo) with
the icefloe of git revision REF, interleaved with this build's, for a before/after.

Every timed run waits (up to ``--max-wait`` s) for a second in which other processes used
less than ``--busy-per-core`` of each core, records the load average before and after and
the cores other work used meanwhile, and is repeated once when that was over the threshold;
runs that stayed disturbed are kept and flagged in RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import measure, report
from benchmarks.infra import (
    ROOT,
    Conditions,
    drain_prefect,
    machine,
    prefect_server,
    prefect_settings,
    versions,
)

SECTIONS = ("bulk", "small", "demo", "appends", "scaling", "resume", "backfill", "postcommit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "RESULTS.md",
        help="the Markdown report; results.png and results.json go beside it",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where repositories are written (default: a temp dir)"
    )
    parser.add_argument(
        "--api-url", help="a running Prefect API (default: start `prefect server start`)"
    )
    parser.add_argument(
        "--scheduler-address", help="a running dask scheduler (default: a LocalCluster, 2 workers)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every data size by this (to fit a slower machine; said in RESULTS.md)",
    )
    parser.add_argument(
        "--appends",
        type=int,
        default=300,
        help="how many small appends in measurement 3 (1000 as the issue had: 2 more minutes)",
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        help="also run the CLI measurements with the icefloe of this git revision",
    )
    parser.add_argument(
        "--busy-per-core",
        type=float,
        default=0.25,
        help="other work above this share of each core makes a measurement busy (repeated)",
    )
    parser.add_argument(
        "--wait-budget",
        type=float,
        default=120.0,
        help="seconds of waiting for quiet in all (a machine that is never quiet costs this)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=30.0,
        help="seconds to wait for a quiet second before each measurement (2 min in all)",
    )
    parser.add_argument(
        "--largest-gb",
        type=float,
        default=4.0,
        help="the largest size of measurements 4 and 6, run once (the issue's 8 if time allows)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of {','.join(SECTIONS)} (the others are reported as not run)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = (
        measure.smoke_config()
        if args.smoke
        else measure.full_config(args.scale, args.appends, args.largest_gb)
    )
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := only - set(SECTIONS):
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    results: dict[str, Any] = {
        "mode": config.mode,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "config": asdict(config),
        "command": "python -m benchmarks.run"
        + (" --smoke" if args.smoke else "")
        + (f" --before {args.before}" if args.before else ""),
    }
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="icefloe-bm-")))
        with _timed(log, "Prefect API") as timing:
            api_url = args.api_url or stack.enter_context(prefect_server(workdir / "prefect"))
        results["prefect_api"] = {
            "url_kind": "given" if args.api_url else "prefect server start (this run)",
            "start_seconds": timing["seconds"],
        }
        stack.enter_context(prefect_settings(api_url, workdir / "prefect-results"))
        stack.callback(drain_prefect)  # runs before the server stops
        if not config.heartbeats:
            stack.enter_context(measure.no_heartbeats())
        address, client = _cluster(stack, args.scheduler_address)
        conditions = Conditions(
            busy_per_core=args.busy_per_core,
            max_wait=args.max_wait,
            wait_budget=args.wait_budget,
        )
        if args.smoke:
            conditions = Conditions(busy_per_core=float("inf"), max_wait=0, retries=0)
        before = _checkout(args.before, workdir) if args.before else None
        bench = measure.Bench(
            config, workdir, client, address, api_url, log, conditions, before, args.before
        )
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "bulk": lambda: measure.bulk_create(bench),
            "small": lambda: measure.small_writes(bench),
            "demo": lambda: measure.demo(bench),
            "appends": lambda: measure.append_scaling(bench),
            "scaling": lambda: measure.scaling(bench, results.get("bulk")),
            "resume": lambda: measure.resume(bench),
            "backfill": lambda: measure.backfill(bench),
            "postcommit": lambda: measure.post_commit(bench),
        }
        for name, step in steps.items():
            if name not in only:
                results[name] = {"skipped": True, "reason": "not run (--only)"}
                continue
            with _timed(log, name) as timing:
                try:
                    results[name] = step()
                except Exception as err:  # keep the other sections of a long run
                    traceback.print_exc()
                    log(f"{name} failed: {type(err).__name__}: {err}")
                    results[name] = {"skipped": True, "reason": f"failed: {err!r}"}
            results[name]["section_seconds"] = timing["seconds"]
        results["conditions"] = {
            "busy_per_core": conditions.busy_per_core,
            "threshold_cores": conditions.threshold,
            "max_wait": conditions.max_wait,
            "wait_budget": conditions.wait_budget,
            "waited_seconds": conditions.waited,
            "retried_seconds": conditions.retried,
            "before": args.before,
            "before_commit": _commit(args.before) if args.before else None,
            "this_commit": _commit("HEAD"),
        }
    results["total_seconds"] = time.perf_counter() - started
    results["machine_after"] = {"load_average": machine()["load_average"]}
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot = out.parent / "results.png"
    report.plot(results, plot)
    # the Scale section (python -m benchmarks.scale) is that benchmark's: kept as it was
    from benchmarks.scale_report import keep_scale_section

    out.write_text(keep_scale_section(out, report.markdown(results, plot.name)))
    log(f"wrote {out}, {plot} and {out.parent / 'results.json'}")
    return 0


@contextlib.contextmanager
def _timed(log: Callable[[str], None], what: str) -> Any:
    timing: dict[str, float] = {}
    begun = time.perf_counter()
    yield timing
    timing["seconds"] = time.perf_counter() - begun
    log(f"{what}: {timing['seconds']:.1f} s")


def _commit(ref: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def _checkout(ref: str, workdir: Path) -> Path:
    """The source tree of git revision ``ref`` of this repository, under ``workdir``."""
    tree = workdir / f"before-{ref.replace('/', '_')}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _cluster(stack: contextlib.ExitStack, address: str | None) -> tuple[str, Any]:
    from distributed import Client, LocalCluster

    if not address:
        cluster = stack.enter_context(
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        )
        address = str(cluster.scheduler_address)
    client = stack.enter_context(Client(address, set_as_default=False))
    return address, client


if __name__ == "__main__":
    sys.exit(main())
