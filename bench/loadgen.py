"""Load: wrk for throughput and latency, streamgen for time to first token.

Where it sits in the flow::

    run.py --probe(url, mode)--> one request: does the target serve this mode at all?
           --measure_cell(proc, url, c, seconds, mode)--> wrk (wrk.lua: BENCHJSON line)
                                                  + targets.RssSampler / cpu_seconds
           --measure_ttft(proc, url, c, seconds)--> streamgen.py (a separate process, JSON)
        <-- one cell's figures: req/s, percentiles in ms, CPU s per 1k requests, peak RSS

Both generators get the request body in ``BENCH_BODY`` and the mode's path in
their URL, and print their raw figures; they are parsed here into the cells
that results.json holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from typing import Any

from common import BENCH, CLIENT_KEY, MODES, PY, Mode
from targets import Proc, RssSampler, cpu_seconds


def probe(url: str, mode: Mode) -> str | None:
    """None when ``url`` answers one call of ``mode`` with 200, else what went wrong.

    A target that does not serve a mode (a sidecar from before it proxied the
    whole API, a proxy without the route) would answer wrk with fast errors,
    figures that mean nothing; such a mode is left out for it (n/a).
    """
    request = urllib.request.Request(
        url + mode.path,
        data=json.dumps(mode.body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return str(exc)


def wrk(url: str, connections: int, seconds: float, mode: Mode) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk.lua"),
        url + mode.path,
    ]
    env = {**os.environ, "BENCH_BODY": json.dumps(mode.body)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            return result
    raise RuntimeError(f"wrk printed no figures: {done.stdout[-500:]} {done.stderr[-500:]}")


def streamgen(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    argv = [PY, str(BENCH / "streamgen.py"), url + MODES["stream"].path]
    argv += [str(concurrency), str(seconds)]
    env = {**os.environ, "BENCH_BODY": json.dumps(MODES["stream"].body)}
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=BENCH, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"streamgen failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def pct(samples: list[int], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])


def measure_cell(proc: Proc | None, url: str, c: int, seconds: float, mode: Mode) -> dict[str, Any]:
    pids = proc.pids if proc is not None else []
    cpu0 = cpu_seconds(pids)
    with RssSampler(pids) as rss:
        figures = wrk(url, c, seconds, mode)
    cpu = cpu_seconds(pids) - cpu0
    requests = figures["requests"]
    errors = figures["errors"]
    p = figures["percentiles_us"]
    return {
        "concurrency": c,
        "mode": mode.key,
        "stream": mode.stream,
        "requests": requests,
        "rps": requests / (figures["duration_us"] / 1e6),
        "errors": sum(errors.values()),
        "p50_ms": p["50"] / 1000,
        "p90_ms": p["90"] / 1000,
        "p99_ms": p["99"] / 1000,
        "mean_ms": figures["latency_mean_us"] / 1000,
        "percentiles_ms": {k: v / 1000 for k, v in p.items()},
        "cpu_s_per_1k": (cpu / requests * 1000) if pids and requests else None,
        "peak_rss_mb": rss.peak if pids else None,
    }


def measure_ttft(proc: Proc | None, url: str, c: int, seconds: float) -> dict[str, Any]:
    figures = streamgen(url, c, seconds)
    ttft, total = figures["ttft_us"], figures["total_us"]
    return {
        "concurrency": c,
        "requests": figures["requests"],
        "errors": figures["errors"],
        "rps": figures["requests"] / figures["elapsed"],
        "ttft_p50_ms": pct(ttft, 50) / 1000,
        "ttft_p90_ms": pct(ttft, 90) / 1000,
        "ttft_p99_ms": pct(ttft, 99) / 1000,
        "total_p50_ms": pct(total, 50) / 1000,
        "total_p99_ms": pct(total, 99) / 1000,
    }
