"""RESULTS.md's Scale section and the scale plots, from scale_results.json.

The section sits between two markers in RESULTS.md and is replaced there on every run;
the rest of the file (``python -m benchmarks.run``'s report) is left as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN = "<!-- scale:begin (python -m benchmarks.scale writes this section) -->"
END = "<!-- scale:end -->"

GOALS = {
    "contention": "every window lands, data identical, no run fails, total ≤ 1.5× ideal",
    "bigrun": "peak RSS ≤ 1 GB, flow process (merge + commit) and each worker",
    "growth": "≤ 1.2× a young archive",
    "planning": "plan ≤ 5 s, ≤ 10 ms orchestration a window",
    "gc": "peak RSS < 1 GB",
}


def write(results: dict[str, Any], where: Path) -> None:
    """Plots beside ``where``/scale_results.json and the section in RESULTS.md."""
    sections = results.get("sections", {})
    plots = _plots(sections, where)
    text = _markdown(results, plots)
    path = where / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def keep_scale_section(path: Path, new_text: str) -> str:
    """``new_text`` (a new RESULTS.md) with the Scale section ``path`` holds now, if any."""
    old = path.read_text() if path.exists() else ""
    match = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), old, flags=re.S)
    if match is None or BEGIN in new_text:
        return new_text
    return new_text.rstrip() + "\n\n" + match.group(0) + "\n"


def _gb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e9:.2f} GB"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


# -- headline -------------------------------------------------------------------------------------


def _headline(sections: dict[str, Any]) -> list[str]:
    rows = ["| target | goal | measured | |", "|---|---|---|---|"]
    contention = sections.get("contention", {})
    for kind in ("local", "s3"):
        entry = contention.get(kind)
        if not entry:
            continue
        backfill, regions = entry["backfill"], entry["regions"]
        ok_b = (
            backfill["identical_to_sequential"]
            and backfill["concurrent"]["identical"]
            and backfill["ratio_to_ideal"] <= 1.5
        )
        rows.append(
            f"| 1. contention, {kind}: backfill of {backfill['windows']} windows, "
            f"{backfill['batch']} in flight | {GOALS['contention']} | "
            f"{backfill['ratio_to_ideal']:.2f}× ideal, identical: "
            f"{backfill['identical_to_sequential']}, {backfill['rebased_commits']} rebased "
            f"commits, {backfill['bytes_rewritten_per_window']:.0f} B re-written a window | "
            f"{_met(ok_b)} |"
        )
        ok_r = (
            not regions["concurrent"]["failures"]
            and regions["identical"]
            and regions["ratio_to_ideal"] <= 1.5
        )
        rows.append(
            f"| 1. contention, {kind}: {regions['runs']} concurrent region runs | "
            f"{GOALS['contention']} | {regions['ratio_to_ideal']:.2f}× ideal, "
            f"{len(regions['concurrent']['failures'])} failed, identical: {regions['identical']}, "
            f"{regions['rebased_commits']} of {regions['commits']} commits rebased, "
            f"{regions['bytes_rewritten_per_window']:.0f} B re-written a run | {_met(ok_r)} |"
        )
    bigrun = sections.get("bigrun", {}).get("rows") or []
    if bigrun:
        top = bigrun[-1]
        flow = top["peak_rss"].get("flow process", 0)
        workers = max(v for k, v in top["peak_rss"].items() if k.startswith("worker"))
        ok = flow <= 1e9 and workers <= 1e9
        rows.append(
            f"| 2. big change set: {top['chunks']:,} chunks in one run | {GOALS['bigrun']} | "
            f"flow process {_gb(flow)} (during commit {_gb(top['peak_rss_during_commit'].get('flow process'))}), "
            f"workers ≤ {_gb(workers)}, commit {top['commit_seconds']:.1f} s | {_met(ok)} |"
        )
    growth = sections.get("growth", {}).get("phases") or {}
    split = growth.get("split (default)")
    if split:
        rows.append(
            f"| 3. growth: append into {split['old_chunks']:,} chunks vs a young archive | "
            f"{GOALS['growth']} | {split['ratio']:.2f}× (commit {split['old']['commit_median'] * 1000:.0f} "
            f"vs {split['young']['commit_median'] * 1000:.0f} ms) | {_met(split['ratio'] <= 1.2)} |"
        )
    planning = sections.get("planning", {}).get("rows") or []
    if planning:
        biggest = max(r["windows"] for r in planning)
        for row in [r for r in planning if r["windows"] == biggest]:
            ok = row["seconds"]["plan"] <= 5 and row["orchestration_ms_per_window"] <= 10
            rows.append(
                f"| 4. planning: backfill of {row['windows']:,} windows, batch {row['batch']} | "
                f"{GOALS['planning']} | plan {row['seconds']['plan']:.2f} s, "
                f"{row['orchestration_ms_per_window']:.1f} ms a window | {_met(ok)} |"
            )
    gc = sections.get("gc")
    if gc and "peak_rss" in gc:
        r = gc["result"]
        rows.append(
            f"| 5. garbage collection: {gc['chunks']:,} chunks, {r['snapshots_expired']} snapshots "
            f"expired | {GOALS['gc']} | {_gb(gc['peak_rss'])}, {gc['maintenance_seconds']:.1f} s | "
            f"{_met(gc['peak_rss'] < 1e9)} |"
        )
    return rows


# -- details --------------------------------------------------------------------------------------


def _section_contention(entry: dict[str, Any]) -> list[str]:
    out = []
    for kind in ("local", "s3"):
        if kind not in entry:
            continue
        b, r = entry[kind]["backfill"], entry[kind]["regions"]
        where = (
            "local filesystem" if kind == "local" else "S3 test server (moto, tests/s3_server.py)"
        )
        out += [
            f"**{where}**",
            "",
            "| run | wall s | write s | commits | rebased | re-written | identical |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, run in (("backfill, one window at a time", b["sequential"]),
                           (f"backfill, {b['batch']} in flight", b["concurrent"])):  # fmt: skip
            res = run["result"]
            out.append(
                f"| {label} | {run['wall']:.1f} | {res['seconds']['write']:.1f} | {res['commits']} | "
                f"{res['rebased_commits']} | {res['windows_rewritten']} windows | {run['identical']} |"
            )
        out.append(
            f"| {r['runs']} region runs, one after the other | {r['sequential']['wall']:.1f} | — | "
            f"{r['runs']} | — | — | — |"
        )
        out.append(
            f"| {r['runs']} region runs at once | {r['concurrent']['wall']:.1f} | — | {r['commits']} | "
            f"{r['rebased_commits']} | {r['runs_started_over']} runs started over | {r['identical']} |"
        )
        out += [
            "",
            f"Backfill: ideal = write time one window at a time ÷ {b['parallelism']} (worker "
            f"threads) = {b['ideal_seconds']:.1f} s; measured {b['write_seconds']:.1f} s = "
            f"**{b['ratio_to_ideal']:.2f}×**. Region runs: ideal = sum of the runs alone ÷ "
            f"{r['parallelism']} = {r['ideal_seconds']:.1f} s; measured {r['concurrent']['wall']:.1f} s = "
            f"**{r['ratio_to_ideal']:.2f}×**. The runs at once used "
            f"{r['concurrent'].get('flow_cpu_seconds', 0):.0f} CPU s in their flow processes and "
            f"{r['concurrent'].get('service_cpu_seconds', 0):.0f} in the shared services (dask "
            f"workers and scheduler, Prefect API): at least "
            f"{r.get('cpu_floor_seconds', 0):.1f} s on this machine's cores however they are "
            f"scheduled. Retries seen in the logs: {_retries(r['concurrent']['retries'])}."
            + _machine_ideal(r),
            "",
        ]
    return out


def _machine_ideal(r: dict[str, Any]) -> str:
    """The ideal this machine allows: the CPU the same runs took one after the other."""
    if "sequential_cpu_floor_seconds" not in r:
        return ""
    seq = r["sequential"]
    return (
        f" One after the other, the same runs used {seq['flow_cpu_seconds']:.0f} CPU s in "
        f"their flow processes and {seq['service_cpu_seconds']:.0f} in the services: "
        f"{r['sequential_cpu_floor_seconds']:.1f} s of these cores with no contention at all. "
        f"Against max(ideal, that), the runs at once took **{r['ratio_to_machine_ideal']:.2f}×**."
    )


def _retries(counts: dict[str, int]) -> str:
    shown = [f"{v} {k}" for k, v in counts.items() if v]
    return ", ".join(shown) or "none"


def _section_bigrun(entry: dict[str, Any], plot: str | None) -> list[str]:
    out = [
        "| chunks | wall s | batches | commit s | flow process peak | during commit | worker peaks | scheduler | manifests | data |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in entry["rows"]:
        peaks = row["peak_rss"]
        workers = ", ".join(_gb(v) for k, v in peaks.items() if k.startswith("worker"))
        out.append(
            f"| {row['chunks']:,} | {row['wall']:.0f} | {row['batches']} | {row['commit_seconds']:.1f} | "
            f"{_gb(peaks.get('flow process'))} | {_gb(row['peak_rss_during_commit'].get('flow process'))} | "
            f"{workers} | {_gb(peaks.get('scheduler'))} | {row['manifests']} | "
            f"{'identical' if row.get('identical') else 'DIFFERS'} |"
        )
    if plot:
        out += ["", f"![RSS and commit time against chunks]({plot})"]
    return out


def _section_growth(entry: dict[str, Any], plot: str | None) -> list[str]:
    out = [
        "| manifests | old archive | commit, old (median) | commit, young (median) | ratio | first append after the change, old / young |",
        "|---|---|---|---|---|---|",
    ]
    for label, p in entry["phases"].items():
        out.append(
            f"| {label} | {p['old_chunks']:,} chunks, {p['old_manifests']} manifests | "
            f"{p['old']['commit_median'] * 1000:.0f} ms ({p['old']['commit_min'] * 1000:.0f}–{p['old']['commit_max'] * 1000:.0f}) | "
            f"{p['young']['commit_median'] * 1000:.0f} ms ({p['young']['commit_min'] * 1000:.0f}–{p['young']['commit_max'] * 1000:.0f}) | "
            f"**{p['ratio']:.2f}×** | {p['old']['first_commit']:.2f} s / {p['young']['first_commit']:.2f} s |"
        )
    if plot:
        out += ["", f"![commit time of each append]({plot})"]
    return out


def _section_planning(entry: dict[str, Any], plot: str | None) -> list[str]:
    out = [
        "| windows | batch | extend s | plan s | write s | same units, bare script s | orchestration ms a window | commits | units per worker (busy s) | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in entry["rows"]:
        sec = row["seconds"]
        workers = ", ".join(
            f"{int(w['tasks'])} ({w['seconds']:.1f})" for w in row["workers"].values()
        )
        out.append(
            f"| {row['windows']:,} | {row['batch']} | {sec['extend']:.1f} | {sec['plan']:.2f} | "
            f"{sec['write']:.1f} | {row['direct_write']:.1f} | {row['orchestration_ms_per_window']:.1f} | "
            f"{row['commits']} | {workers} | {row['identical']} |"
        )
    if plot:
        out += ["", f"![planning and orchestration]({plot})"]
    return out


def _section_gc(entry: dict[str, Any]) -> list[str]:
    r = entry["result"]
    return [
        "| chunks | snapshots before | expired | chunks deleted | manifests deleted | snapshots deleted | bytes deleted | seconds | peak RSS | data after |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {entry['chunks']:,} | {entry['snapshots_before']} | {r['snapshots_expired']} | "
        f"{r['chunks_deleted']:,} | {r['manifests_deleted']:,} | {r['snapshots_deleted']:,} | "
        f"{r['bytes_deleted'] / 1e6:.1f} MB | {entry['maintenance_seconds']:.1f} | {_gb(entry['peak_rss'])} | "
        f"{'identical' if entry['identical_after'] else 'DIFFERS'} |",
    ]


def _markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    sections = results.get("sections", {})
    machine = results.get("machine", {})
    lines = [
        "## Scale",
        "",
        f"Generated by `python -m benchmarks.scale` (last run {results.get('date', '?')}; each "
        "section says its own date and sizes). Raw numbers: `scale_results.json`. An external "
        "dask cluster started by the benchmark (`dask scheduler` + 2 × `dask worker --nthreads 1 "
        "--no-nanny`), `prefect server start` on a new database; flows run in the benchmark "
        f"process. Machine: {machine.get('cores')} cores, {machine.get('memory_gb', 0):.0f} GB, "
        "shared with other work: the load average before and after each section is shown, and "
        "timings under a load several times the core count are noisy.",
        "",
        *_headline(sections),
        "",
    ]
    order = [
        ("contention", "1. Contention: many windows and many runs at once"),
        ("bigrun", "2. Big change sets: one run writing many tiny chunks"),
        ("growth", "3. Growth: commit latency of an append as the archive grows"),
        ("planning", "4. Planning and orchestration of backfills"),
        ("gc", "5. Garbage collection at scale"),
    ]
    for key, title in order:
        entry = sections.get(key)
        if not entry:
            continue
        lines += [f"### {title}", ""]
        lines.append(
            f"{entry.get('sizes', '?')} sizes, {entry.get('date', '?')}, {entry.get('seconds', 0):.0f} s, "
            f"load {entry.get('load_before', '?')} → {entry.get('load_after', '?')} (1 / 5 / 15 min)."
        )
        lines.append("")
        if "failed" in entry:
            lines += [f"Failed: `{entry['failed']}`", ""]
            continue
        if "shape" in entry:
            lines += [f"Data: {entry['shape']}.", ""]
        body = {
            "contention": lambda e: _section_contention(e),
            "bigrun": lambda e: _section_bigrun(e, plots.get("bigrun")),
            "growth": lambda e: _section_growth(e, plots.get("growth")),
            "planning": lambda e: _section_planning(e, plots.get("planning")),
            "gc": lambda e: _section_gc(e),
        }[key](entry)
        lines += [*body, ""]
    notes = Path(__file__).with_name("scale_notes.md")
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- plots ----------------------------------------------------------------------------------------


def _plots(sections: dict[str, Any], where: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    rows = (sections.get("bigrun") or {}).get("rows")
    if rows:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        chunks = [r["chunks"] for r in rows]
        for name in rows[-1]["peak_rss"]:
            left.plot(chunks, [r["peak_rss"].get(name, 0) / 1e9 for r in rows], "o-", label=name)
        left.plot(
            chunks,
            [r["peak_rss_during_commit"].get("flow process", 0) / 1e9 for r in rows],
            "k--",
            label="flow process, during commit",
        )
        left.axhline(1.0, color="red", lw=0.8, ls=":")
        left.set(
            xscale="log", xlabel="chunks written in one run", ylabel="peak RSS (GB)", title="memory"
        )
        left.legend(fontsize=7)
        right.plot(chunks, [r["commit_seconds"] for r in rows], "o-", label="commit")
        right.plot(chunks, [r["wall"] for r in rows], "s-", label="whole run")
        right.set(
            xscale="log",
            yscale="log",
            xlabel="chunks written in one run",
            ylabel="seconds",
            title="time",
        )
        right.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(where / "scale_bigrun.png")
        plt.close(fig)
        made["bigrun"] = "scale_bigrun.png"
    phases = (sections.get("growth") or {}).get("phases")
    if phases:
        fig, axes = plt.subplots(
            1, len(phases), figsize=(5 * len(phases), 3.4), dpi=100, squeeze=False
        )
        for ax, (label, p) in zip(axes[0], phases.items(), strict=True):
            for name in ("old", "young"):
                ax.plot([c * 1000 for c in p[name]["commits"]], "o-", label=f"{name} archive")
            ax.set(xlabel="append (the first changes the layout)", ylabel="commit ms", title=label)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(where / "scale_growth.png")
        plt.close(fig)
        made["growth"] = "scale_growth.png"
    planning = (sections.get("planning") or {}).get("rows")
    if planning:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
        for batch in sorted({r["batch"] for r in planning}):
            picked = [r for r in planning if r["batch"] == batch]
            xs = [r["windows"] for r in picked]
            left.plot(xs, [r["seconds"]["plan"] for r in picked], "o-", label=f"batch {batch}")
            right.plot(
                xs, [r["orchestration_ms_per_window"] for r in picked], "o-", label=f"batch {batch}"
            )
        left.axhline(5, color="red", lw=0.8, ls=":")
        right.axhline(10, color="red", lw=0.8, ls=":")
        left.set(xscale="log", xlabel="windows", ylabel="planning s", title="planning")
        right.set(
            xscale="log",
            xlabel="windows",
            ylabel="ms a window",
            title="orchestration (flow − bare script)",
        )
        left.legend(fontsize=7)
        right.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(where / "scale_planning.png")
        plt.close(fig)
        made["planning"] = "scale_planning.png"
    return made
