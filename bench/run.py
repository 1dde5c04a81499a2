"""Side-by-side proxy benchmark: direct, bare pass-through, minimal, the sidecar, LiteLLM.

Everything runs on loopback against one instant upstream (``upstream.py``), so
what is measured is the proxy. The minimal proxy (``minimalproxy.py``) is the bare
pass-through plus what no cost-reporting proxy can skip (parse the request,
read and price the answer): the sidecar's distance from it is what its
features cost. For each target and each mode (chat
non-streamed and streamed with 50 SSE chunks, embeddings, the Responses API
non-streamed and streamed; ``common.MODES``) that the target serves, wrk
drives a fixed duration at concurrency 1, 32 and 128; a separate Python
process (``streamgen.py``) measures chat's time to first token. The proxy
process's CPU time and RSS are read from /proc. Then start-up to ``/readyz`` =
200, idle RSS, and RSS drift over 100k requests.

Writes ``bench/results.json`` (raw), ``bench/RESULTS.md`` (tables, machine,
targets) and ``bench/latency.png`` (when matplotlib could be installed in the
bench's own virtual environment). Usage::

    python bench/run.py [--seconds 5] [--no-litellm] [--drift-requests 100000]
                        [--modes json,stream,embeddings,responses,responses-stream]
                        [--compare-ref REF]

Where it sits: this is the driver (the command line, the rounds, the start-up
and drift runs). It starts the targets with ``targets.py``, loads them with
``loadgen.py``, renders with ``report.py``; ``common.py`` holds what they share.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    CONCURRENCY,
    LITELLM_PY,
    MODES,
    TARGETS,
    TTFT_CONCURRENCY,
    Mode,
    say,
)
from loadgen import measure_cell, measure_ttft, probe, wrk
from report import cell, machine, markdown, plot_latency, print_table
from targets import (
    Proc,
    ensure_bench_venv,
    rss_mb,
    start_bare,
    start_litellm,
    start_minimal,
    start_sidecar,
    start_sidecar_ref,
    start_upstream,
)


def _cell_line(name: str, item: dict[str, Any]) -> str:
    return (
        f"  {TARGETS[name]:30} {MODES[item['mode']].label:8} "
        f"c={item['concurrency']:<3} {item['rps']:8.0f} req/s  p50 {item['p50_ms']:7.2f}  "
        f"p99 {item['p99_ms']:7.2f} ms  errors {item['errors']}"
    )


def served_modes(
    urls: dict[str, str], modes: list[Mode], notes: list[str]
) -> dict[str, list[Mode]]:
    """The modes each target answers with 200; the others are its n/a rows, with a note."""
    served: dict[str, list[Mode]] = {}
    for name, url in urls.items():
        served[name] = []
        for mode in modes:
            problem = probe(url, mode)
            if problem is None:
                served[name].append(mode)
                continue
            say(f"{TARGETS[name]}: {mode.path} ({mode.key}) not served ({problem}); n/a")
            notes.append(f"{TARGETS[name]}: {mode.title} not served ({problem}); n/a.")
    return served


def bench_all(
    procs: dict[str, Proc | None], urls: dict[str, str], args: Any, notes: list[str]
) -> dict[str, Any]:
    """Every cell for every target, targets interleaved cell by cell, best of the rounds.

    All targets are up at once (an idle proxy costs nothing), so a burst of
    load from elsewhere on a shared machine hits one cell of each target
    rather than all cells of one; the best of ``rounds`` keeps the figure
    least disturbed by it, and every round's req/s is kept beside it
    (``rps_rounds``) to show how far apart rounds land.
    """
    out: dict[str, dict[str, Any]] = {name: {"cells": [], "ttft": []} for name in urls}
    served = served_modes(urls, args.modes, notes)
    for name, url in urls.items():
        for mode in served[name]:
            wrk(url, 32, 1, mode)  # warm-up: connections, caches, lazy imports
        proc = procs[name]
        if proc is not None:
            out[name]["rss_after_warmup_mb"] = rss_mb(proc.pids)
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for round_no in range(args.rounds):
        say(f"== round {round_no + 1} of {args.rounds}")
        for mode in args.modes:
            for c in CONCURRENCY:
                for name, url in urls.items():
                    if mode not in served[name]:
                        continue
                    item = measure_cell(procs[name], url, c, args.seconds, mode)
                    say(_cell_line(name, item))
                    key = (name, mode.key, c)
                    previous = best.get(key)
                    if previous is None:
                        best[key] = {**item, "rps_rounds": [item["rps"]]}
                        continue
                    peak = max(item["peak_rss_mb"] or 0, previous["peak_rss_mb"] or 0) or None
                    rounds = [*previous["rps_rounds"], item["rps"]]
                    if item["rps"] > previous["rps"]:
                        best[key] = item
                    best[key]["peak_rss_mb"] = peak
                    best[key]["rps_rounds"] = rounds
    for (name, mode_key, c), item in best.items():
        out[name]["cells"].append(item)
        if item["requests"] == 0:
            notes.append(
                f"{TARGETS[name]}: {MODES[mode_key].title}, c={c}: no call completed within "
                f"{args.seconds:g} s in any round; n/a."
            )
    if MODES["stream"] not in args.modes:
        return out
    say("== time to first token")
    for c in TTFT_CONCURRENCY:
        for name, url in urls.items():
            if MODES["stream"] not in served[name]:
                continue
            ttft = measure_ttft(procs[name], url, c, args.seconds)
            out[name]["ttft"].append(ttft)
            say(
                f"  {TARGETS[name]:30} c={c:<3} TTFT p50 {ttft['ttft_p50_ms']:.2f} ms  "
                f"p99 {ttft['ttft_p99_ms']:.2f} ms"
            )
    return out


def startup_runs(work: Path, upstream: str, runs: int, ref: str | None = None) -> dict[str, Any]:
    """Process start to /readyz = 200, and RSS a second after, over several starts."""
    times, idle = [], []
    for _ in range(runs):
        proc = start_sidecar_ref(work, upstream, ref) if ref else start_sidecar(work, upstream)
        assert proc.ready_after is not None
        times.append(proc.ready_after)
        time.sleep(1.0)
        idle.append(rss_mb(proc.pids))
        proc.stop()
    return {
        "ready_s": times,
        "ready_median_s": statistics.median(times),
        "idle_rss_mb": idle,
        "idle_rss_median_mb": statistics.median(idle),
    }


def drift_run(proc: Proc, url: str, total: int, rate_hint: float) -> dict[str, Any]:
    """RSS before and after ``total`` more non-streamed requests at concurrency 32."""
    before = rss_mb(proc.pids)
    done, rounds = 0, 0
    while done < total and rounds < 20:
        seconds = max(2.0, min(120.0, (total - done) / max(rate_hint, 1.0) * 1.05))
        figures = wrk(url, 32, seconds, MODES["json"])
        done += figures["requests"]
        rate_hint = figures["requests"] / (figures["duration_us"] / 1e6)
        rounds += 1
    time.sleep(1.0)
    after = rss_mb(proc.pids)
    return {
        "requests": done,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "drift_mb": after - before,
    }


# -- main ----------------------------------------------------------------------


def report_only() -> int:
    results = json.loads((BENCH / "results.json").read_text())
    for name, label in results.get("labels", {}).items():
        TARGETS[name] = label
    results["plot"] = plot_latency()
    (BENCH / "RESULTS.md").write_text(markdown(results))
    print_table(results)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="best of N rounds (default 2)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    parser.add_argument("--drift-requests", type=int, default=100_000, help="0 skips the drift run")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument(
        "--only", help="comma-separated targets (direct,bare,minimal,sidecar,litellm)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated modes (default all: {','.join(MODES)})",
    )
    parser.add_argument(
        "--compare-ref", help="also measure the sidecar as committed at this git ref (before/after)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md and latency.png from results.json without measuring",
    )
    args = parser.parse_args()
    if args.report_only:
        return report_only()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))} (known: {', '.join(MODES)})")
    args.modes = [mode for key, mode in MODES.items() if key in args.modes.split(",")]
    if args.compare_ref:
        TARGETS["sidecar-ref"] = f"sidecar at {args.compare_ref}"
    if shutil.which("wrk") is None:
        say("wrk is needed (apt-get install wrk)")
        return 2
    only = set(args.only.split(",")) if args.only else set(TARGETS)
    if args.no_litellm:
        only.discard("litellm")
    results: dict[str, Any] = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "modes": [mode.key for mode in args.modes],
        "machine": machine(),
        "targets": {},
        "notes": [],
    }
    if args.compare_ref:
        results["notes"].append(
            f"`sidecar at {args.compare_ref}`: the sidecar package as committed at "
            f"{args.compare_ref} (git archive), run beside the working tree's for before/after."
        )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        have = {"litellm": False, "matplotlib": False}
        if "litellm" in only:
            have = ensure_bench_venv(work)
        elif LITELLM_PY.exists():
            probe = [str(LITELLM_PY), "-I", "-c", "import matplotlib"]
            have["matplotlib"] = subprocess.run(probe, cwd=BENCH).returncode == 0
        upstream = start_upstream(work)
        procs: dict[str, Proc | None] = {}
        urls: dict[str, str] = {}
        if "direct" in only:
            procs["direct"], urls["direct"] = None, upstream.url
        starters: dict[str, Callable[[], Proc]] = {
            "bare": lambda: start_bare(work, upstream.url),
            "minimal": lambda: start_minimal(work, upstream.url),
            "sidecar": lambda: start_sidecar(work, upstream.url),
            "litellm": lambda: start_litellm(work, upstream.url),
        }
        if args.compare_ref:
            starters["sidecar-ref"] = lambda: start_sidecar_ref(
                work, upstream.url, args.compare_ref
            )
            only.add("sidecar-ref")
        try:
            for name, start in starters.items():
                if name not in only:
                    continue
                if name == "litellm" and not have["litellm"]:
                    results["notes"].append("LiteLLM: not installed in bench/.venv-litellm; n/a.")
                    continue
                try:
                    started = start()
                except (RuntimeError, OSError) as exc:
                    say(f"{name}: could not start: {exc}")
                    results["notes"].append(f"{TARGETS[name]}: could not start ({exc}); n/a.")
                    continue
                procs[name], urls[name] = started, started.url
                say(f"{TARGETS[name]}: ready after {started.ready_after:.2f} s")
            time.sleep(1.0)
            idle = {name: rss_mb(p.pids) for name, p in procs.items() if p is not None}
            try:
                measured = bench_all(procs, urls, args, results["notes"])
            except (RuntimeError, subprocess.SubprocessError) as exc:
                say(f"measurement failed: {exc}")
                results["notes"].append(f"measurement failed ({exc}).")
                measured = {}
            for name, data in measured.items():
                proc = procs[name]
                if proc is not None:
                    data["ready_s"] = proc.ready_after
                    data["idle_rss_mb"] = idle.get(name)
                results["targets"][name] = data
            for name in ("bare", "minimal", "litellm"):
                proc = procs.get(name)
                if proc is not None:
                    proc.stop()
            side = procs.get("sidecar")
            if side is not None and args.drift_requests > 0:
                say(f"== sidecar RSS drift over {args.drift_requests} requests")
                hint = cell(results, "sidecar", "json", 32)
                try:
                    results["drift"] = drift_run(
                        side, side.url, args.drift_requests, hint["rps"] if hint else 1000.0
                    )
                    say(f"  {results['drift']}")
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    results["notes"].append(f"drift run failed ({exc}).")
        finally:
            for proc in procs.values():
                if proc is not None:
                    proc.stop()
        try:
            if "sidecar" in only and args.startup_runs > 0:
                say("== sidecar start-up")
                results["startup"] = startup_runs(work, upstream.url, args.startup_runs)
                say(f"  {results['startup']}")
                if args.compare_ref:
                    results["startup_ref"] = startup_runs(
                        work, upstream.url, args.startup_runs, args.compare_ref
                    )
                    say(f"  at {args.compare_ref}: {results['startup_ref']}")
        finally:
            upstream.stop()
    results["labels"] = {name: TARGETS[name] for name in results["targets"]}
    (BENCH / "results.json").write_text(json.dumps(results, indent=1))
    if have["matplotlib"]:
        results["plot"] = plot_latency()
    else:
        say("matplotlib unavailable: no latency.png")
    (BENCH / "RESULTS.md").write_text(markdown(results))
    print_table(results)
    written = "bench/RESULTS.md, bench/results.json"
    say(f"\nwrote {written}" + (", bench/latency.png" if results.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
