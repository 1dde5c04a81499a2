"""What a run's results.json says: the tables, RESULTS.md and the targets' PASS/MISS.

Where it sits in the flow::

    run.py --results (measured, or read back by --report-only)
        --> markdown() --> RESULTS.md
        --> print_table() --> stdout
        --> plot_latency() --> plot.py (bench/.venv-litellm) --> latency.png
        targets_check(): each goal against the figures --> (target, measured, goal, verdict)
        before_after(): the sidecar / the sidecar at --compare-ref, cell by cell

Nothing here measures; the same results.json always renders the same report.
``machine()`` describes the host when a run starts.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from common import (
    BENCH,
    CONCURRENCY,
    LITELLM_PY,
    MODES,
    TARGETS,
    TTFT_CONCURRENCY,
    Mode,
    mode_of,
    say,
)


def machine() -> dict[str, str]:
    info = {
        "python": platform.python_version(),
        "os": platform.system(),
        "cpus": str(os.cpu_count()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
        info["kernel"] = platform.release()
    except OSError:
        pass
    try:
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
        info["load generator"] = version.split("[", 1)[0].strip() or "wrk"
    except OSError:
        pass
    return info


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def modes_of(results: dict[str, Any]) -> list[Mode]:
    """The modes a run measured (results.json from before the other modes: chat's two)."""
    return [MODES[key] for key in results.get("modes", ("json", "stream"))]


def cell(results: dict[str, Any], target: str, mode: str, c: int) -> dict[str, Any] | None:
    """One measured cell; None (n/a) when not measured or when no call completed in it.

    A cell without a single completed call (a very slow proxy at high
    concurrency) has wrk's empty histogram, zeros that would read as the fastest
    latencies of the table; the run's notes say which cells those were.
    """
    data = results["targets"].get(target)
    if not data or "cells" not in data:
        return None
    for item in data["cells"]:
        if mode_of(item) == mode and item["concurrency"] == c:
            return dict(item) if item["requests"] > 0 else None
    return None


def spread(item: dict[str, Any] | None) -> float | None:
    """How far apart the rounds' req/s landed: (highest - lowest) / highest."""
    rounds = item.get("rps_rounds") if item else None
    if not rounds or len(rounds) < 2 or max(rounds) <= 0:
        return None
    return float((max(rounds) - min(rounds)) / max(rounds))


def ttft_of(results: dict[str, Any], target: str, c: int) -> dict[str, Any] | None:
    data = results["targets"].get(target)
    if not data or "ttft" not in data:
        return None
    return next((dict(t) for t in data["ttft"] if t["concurrency"] == c), None)


def _verdict(ok: bool, margin: str) -> str:
    return f"PASS ({margin})" if ok else f"MISS ({margin})"


def _at_most(
    label: str, value: float, goal: float, unit: str, digits: int, *, signed: bool = False
) -> tuple[str, str, str, str]:
    """A row for a target that caps ``value`` at ``goal`` (latency, time, memory)."""
    sign = "+" if signed else ""
    return (
        label,
        f"{value:{sign}.{digits}f} {unit}",
        f"<= {goal:g} {unit}",
        _verdict(value <= goal, f"{value - goal:+.{digits}f} {unit}"),
    )


_ADDED_LATENCY = (("p50_ms", 0.4), ("p99_ms", 1.0))
"""Non-streamed calls at c=1: what the sidecar may add to the floor, in ms."""


def targets_check(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    for mode in modes_of(results):
        for c in (32, 128):
            side, bare, lite = (
                cell(results, t, mode.key, c) for t in ("sidecar", "bare", "litellm")
            )
            if side and bare:
                ratio = side["rps"] / bare["rps"]
                # A stream's per-event work has no counterpart in a byte pipe.
                floor = 0.6 if mode.stream else 0.7
                rows.append(
                    (
                        f"throughput vs bare, {mode.label}, c={c}",
                        f"{ratio:.0%}",
                        f">= {floor:.0%}",
                        _verdict(ratio >= floor, f"{(ratio - floor) * 100:+.0f} points"),
                    )
                )
            if side and lite and lite["rps"] > 0:
                ratio = side["rps"] / lite["rps"]
                rows.append(
                    (
                        f"throughput vs LiteLLM, {mode.label}, c={c}",
                        f"{ratio:.1f}x",
                        ">= 20x",
                        _verdict(ratio >= 20, f"{ratio / 20:.2f} of goal"),
                    )
                )
            elif side:
                rows.append((f"throughput vs LiteLLM, {mode.label}, c={c}", "n/a", ">= 20x", "n/a"))
    for mode in modes_of(results):
        side, direct = cell(results, "sidecar", mode.key, 1), cell(results, "direct", mode.key, 1)
        if side and direct:
            goals = (("p50_ms", 0.5), ("p99_ms", 1.5)) if mode.stream else _ADDED_LATENCY
            for key, goal in goals:
                label = f"added latency {key[:3]}, {mode.label}, c=1"
                rows.append(_at_most(label, side[key] - direct[key], goal, "ms", 3))
    side, direct = ttft_of(results, "sidecar", 1), ttft_of(results, "direct", 1)
    if side and direct:
        added = side["ttft_p50_ms"] - direct["ttft_p50_ms"]
        rows.append(_at_most("added time to first token p50, c=1", added, 0.7, "ms", 3))
    start = results.get("startup")
    if start:
        rows.append(_at_most("idle RSS", start["idle_rss_median_mb"], 45, "MB", 1))
        ready = start["ready_median_s"]
        rows.append(_at_most("start to /readyz 200 (median)", ready, 0.5, "s", 2))
    sidecar = results["targets"].get("sidecar", {})
    peaks = [c["peak_rss_mb"] for c in sidecar.get("cells", []) if c.get("peak_rss_mb")]
    if peaks:
        rows.append(_at_most("RSS under load (peak)", max(peaks), 70, "MB", 1))
    drift = results.get("drift")
    if drift:
        label = f"RSS drift over {drift['requests'] // 1000}k requests"
        rows.append(_at_most(label, drift["drift_mb"], 5, "MB", 1, signed=True))
    return rows


def feature_cost(results: dict[str, Any]) -> list[str]:
    """Markdown rows: bare, minimal and sidecar at c=32 in CPU per request, and the shares."""
    rows = []
    for mode in modes_of(results):
        bare, minimal, side = (
            cell(results, t, mode.key, 32) for t in ("bare", "minimal", "sidecar")
        )
        if not (bare and minimal and side):
            continue
        cpu = [item["cpu_s_per_1k"] for item in (bare, minimal, side)]
        if not all(cpu):
            continue
        rows.append(
            f"| {mode.label} | {cpu[0]:.3f} | {cpu[1]:.3f} | {cpu[2]:.3f} "
            f"| {minimal['rps'] / bare['rps']:.0%} | {side['rps'] / bare['rps']:.0%} "
            f"| {cpu[2] - cpu[1]:.3f} |"
        )
    if not rows:
        return []
    return [
        "",
        "## What the features cost (c=32)",
        "",
        "CPU ms per request (CPU s per 1k); throughput as a share of the bare pass-through;",
        "the last column is the sidecar's CPU beyond the minimal proxy: its limiter, breaker,",
        "retries and deadlines, spans, metrics, ledger, token estimate and log line.",
        "",
        "| mode | bare | minimal | sidecar | minimal / bare | sidecar / bare | features |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


class Comparison(NamedTuple):
    """One cell of the sidecar beside the same cell of the sidecar at ``--compare-ref``."""

    mode: Mode
    c: int
    now: dict[str, Any]
    before: dict[str, Any] | None

    def ratio(self, key: str) -> float | None:
        """Now / before for one figure (req/s, p50_ms, p99_ms); None when not comparable."""
        if self.before is None or not self.before[key]:
            return None
        return float(self.now[key] / self.before[key])


def before_after(results: dict[str, Any]) -> list[Comparison]:
    """The sidecar's cells beside the older sidecar's; empty without ``--compare-ref``.

    A mode the older sidecar did not serve has ``before`` None: n/a, not a ratio.
    """
    if "sidecar-ref" not in results["targets"]:
        return []
    rows = []
    for mode in modes_of(results):
        for c in CONCURRENCY:
            now = cell(results, "sidecar", mode.key, c)
            if now is not None:
                rows.append(Comparison(mode, c, now, cell(results, "sidecar-ref", mode.key, c)))
    return rows


def before_after_markdown(results: dict[str, Any]) -> list[str]:
    rows = before_after(results)
    if not rows:
        return []
    before = TARGETS.get("sidecar-ref", "sidecar-ref")
    lines = [
        "",
        f"## Before and after: {TARGETS['sidecar']} / {before}",
        "",
        "Both sidecars ran in the same run, cell after cell. A req/s ratio above 1 and",
        "latency ratios below 1 favour the working tree. Round spread is (highest -",
        "lowest) / highest req/s over the rounds of that cell: differences within it",
        "are noise.",
        "",
        "| mode | c | req/s now | req/s before | req/s ratio | p50 ratio | p99 ratio "
        "| round spread now | round spread before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ref_rps = row.before["rps"] if row.before else None
        lines.append(
            f"| {row.mode.label} | {row.c} | {row.now['rps']:.0f} | {fmt(ref_rps, 0)} "
            f"| {fmt(row.ratio('rps'))} | {fmt(row.ratio('p50_ms'))} "
            f"| {fmt(row.ratio('p99_ms'))} | {_pct(spread(row.now))} "
            f"| {_pct(spread(row.before))} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmark results", ""]
    lines += [
        "Generated by `make bench` (`bench/run.py`). Every target runs on loopback against",
        "the same instant upstream (`bench/upstream.py`), so the proxy is what is measured.",
        f"Each cell runs {results['seconds']:g} s with wrk (one thread, keep-alive); all",
        "targets run at once and are measured cell by cell in turn, and each figure is",
        f"the best of {results.get('rounds', 1)} rounds (the highest req/s, with its latencies);",
        "time to first token comes from `bench/streamgen.py`, a separate process.",
        "Each target is first sent one call of each mode; a mode it does not answer",
        "with 200 reads n/a for it (see the notes).",
        "CPU and RSS are the proxy process's own (its whole process tree), read from /proc.",
        "The machine is shared and has few cores: load generator, upstream and proxy",
        "compete for them, so compare the columns of one run; absolute figures vary.",
        "",
        "Added latency is the target's percentile minus the floor's at the same",
        "concurrency. At c=1 the floor's own p99 is mostly scheduling noise from the",
        "shared machine (milliseconds for a request that takes 20 µs), so added p99 there",
        "can come out negative: read the p50s and the latency plot for that row.",
        "",
        "Parse, price, pass through (`bench/minimalproxy.py`, the minimal proxy): the bare",
        "pass-through plus what no cost-reporting proxy can skip, parsing the request and",
        "reading and pricing the answer; no limits, breaker, retries, deadlines, spans,",
        "metrics or log.",
        "",
        "Sidecar: its defaults (metrics, tracing without an exporter, breaker, retries,",
        "cost, one JSON log line per request at info, written to a file) except the",
        "limiter's budgets, raised so it admits the whole load.",
        "",
        "## Machine",
        "",
    ]
    for key, value in results["machine"].items():
        lines.append(f"- {key}: {value}")
    names = [t for t in TARGETS if t in results["targets"]]
    for mode in modes_of(results):
        lines += ["", f"## {mode.title}", "", f"`POST {mode.path}`", ""]
        lines.append(
            "| target | c | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms "
            "| CPU s / 1k req | peak RSS MB | errors |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in CONCURRENCY:
            direct = cell(results, "direct", mode.key, c)
            for name in names:
                item = cell(results, name, mode.key, c)
                if item is None:
                    lines.append(f"| {TARGETS[name]} | {c} | n/a |||||||||")
                    continue
                add50 = item["p50_ms"] - direct["p50_ms"] if direct and name != "direct" else None
                add99 = item["p99_ms"] - direct["p99_ms"] if direct and name != "direct" else None
                lines.append(
                    f"| {TARGETS[name]} | {c} | {item['rps']:.0f} | {item['p50_ms']:.2f} "
                    f"| {item['p90_ms']:.2f} | {item['p99_ms']:.2f} | {fmt(add50, 3)} "
                    f"| {fmt(add99, 3)} | {fmt(item['cpu_s_per_1k'], 3)} "
                    f"| {fmt(item['peak_rss_mb'], 1)} | {item['errors']} |"
                )
    lines += ["", "## Time to first token (streaming)", ""]
    lines.append(
        "| target | c | req/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | added TTFT p50 ms |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for c in TTFT_CONCURRENCY:
        direct = ttft_of(results, "direct", c)
        for name in names:
            t = ttft_of(results, name, c)
            if t is None:
                continue
            added = (
                t["ttft_p50_ms"] - direct["ttft_p50_ms"] if direct and name != "direct" else None
            )
            lines.append(
                f"| {TARGETS[name]} | {c} | {t['rps']:.0f} | {t['ttft_p50_ms']:.2f} "
                f"| {t['ttft_p90_ms']:.2f} | {t['ttft_p99_ms']:.2f} | {fmt(added, 3)} |"
            )
    lines += ["", "## Start-up and memory", ""]
    lines.append("| target | start to ready s | idle RSS MB |")
    lines.append("|---|---:|---:|")
    start = results.get("startup")
    if start:
        lines.append(
            f"| {TARGETS['sidecar']} (median of {len(start['ready_s'])}) "
            f"| {start['ready_median_s']:.3f} | {start['idle_rss_median_mb']:.1f} |"
        )
    ref = results.get("startup_ref")
    if ref:
        lines.append(
            f"| {TARGETS.get('sidecar-ref', 'sidecar (ref)')} (median of {len(ref['ready_s'])}) "
            f"| {ref['ready_median_s']:.3f} | {ref['idle_rss_median_mb']:.1f} |"
        )
    for name in ("bare", "litellm"):
        data = results["targets"].get(name)
        if data and "ready_s" in data:
            lines.append(
                f"| {TARGETS[name]} | {data['ready_s']:.3f} | {fmt(data.get('idle_rss_mb'), 1)} |"
            )
    drift = results.get("drift")
    if drift:
        lines += [
            "",
            f"Sidecar RSS drift: {drift['rss_before_mb']:.1f} MB before, "
            f"{drift['rss_after_mb']:.1f} MB after {drift['requests']} more non-streamed "
            f"requests at c=32 ({drift['drift_mb']:+.1f} MB).",
        ]
    lines += before_after_markdown(results)
    lines += feature_cost(results)
    lines += ["", "## Targets", "", "| target | measured | goal | verdict |", "|---|---:|---:|---|"]
    for row in targets_check(results):
        lines.append("| " + " | ".join(row) + " |")
    if results.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in results["notes"]]
    if results.get("plot"):
        lines += ["", "## Latency distributions", "", "![latency](latency.png)"]
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, Any]) -> None:
    say("")
    say(
        f"{'target':34} {'mode':8} {'c':>4} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} "
        f"{'cpu/1k':>7} {'rssMB':>6}"
    )
    for name in TARGETS:
        for mode in modes_of(results):
            for c in CONCURRENCY:
                item = cell(results, name, mode.key, c)
                if item is None:
                    continue
                say(
                    f"{TARGETS[name]:34} {mode.label:8} {c:>4} {item['rps']:8.0f} "
                    f"{item['p50_ms']:7.2f} {item['p90_ms']:7.2f} {item['p99_ms']:7.2f} "
                    f"{fmt(item['cpu_s_per_1k'], 3):>7} {fmt(item['peak_rss_mb'], 1):>6}"
                )
    comparisons = before_after(results)
    if comparisons:
        say(f"\nsidecar / {TARGETS.get('sidecar-ref', 'sidecar-ref')} (req/s, p50, p99 ratios):")
        for pair in comparisons:
            say(
                f"  {pair.mode.label:8} c={pair.c:<3} req/s {fmt(pair.ratio('rps'))}  "
                f"p50 {fmt(pair.ratio('p50_ms'))}  p99 {fmt(pair.ratio('p99_ms'))}  "
                f"round spread {_pct(spread(pair.now))} / {_pct(spread(pair.before))}"
            )
    say("")
    for row in targets_check(results):
        say(f"  {row[0]:44} {row[1]:>10}  goal {row[2]:>8}  {row[3]}")


def plot_latency() -> bool:
    if not LITELLM_PY.exists():
        say("matplotlib unavailable: no latency.png")
        return False
    plot = subprocess.run(
        [str(LITELLM_PY), "-I", str(BENCH / "plot.py"), str(BENCH / "results.json")],
        cwd=BENCH,
        capture_output=True,
        text=True,
    )
    if plot.returncode != 0:
        say(f"plot failed: {plot.stderr[-500:]}")
    return plot.returncode == 0
