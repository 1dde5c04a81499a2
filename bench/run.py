"""Side-by-side proxy benchmark: direct, bare pass-through, the sidecar, LiteLLM.

Everything runs on loopback against one instant upstream (``upstream.py``), so
what is measured is the proxy. For each target and each mode (non-streaming,
streaming with 50 SSE chunks) wrk drives a fixed duration at concurrency 1, 32
and 128; a separate Python process (``streamgen.py``) measures time to first
token. The proxy process's CPU time and RSS are read from /proc. Then start-up
to ``/readyz`` = 200, idle RSS, and RSS drift over 100k requests.

Writes ``bench/results.json`` (raw), ``bench/RESULTS.md`` (tables, machine,
targets) and ``bench/latency.png`` (when matplotlib could be installed in the
bench's own virtual environment). Usage::

    python bench/run.py [--seconds 5] [--no-litellm] [--drift-requests 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_PY = LITELLM_VENV / "bin" / "python"
CONCURRENCY = (1, 32, 128)
TTFT_CONCURRENCY = (1, 32)
MODEL = "gpt-4o-mini"
# What the load generators send (wrk.lua, streamgen.py); LiteLLM's master key,
# ignored by the others (the sidecar replaces it with its own key).
CLIENT_KEY = "sk-bench-7f3a9c2e5b1d4f6a8e0c3b5d7f9a1c3e"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "stream": True}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "direct": "Direct (no proxy, the floor)",
    "bare": "Bare aiohttp pass-through",
    "sidecar": "openai-runtime sidecar",
    "litellm": "LiteLLM proxy",
}


def say(*parts: object) -> None:
    print(*parts, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


# -- /proc ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * PAGE
    return total / 2**20


class RssSampler:
    """Peak RSS of a process tree while a measurement runs (sampled at 20 Hz)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = rss_mb(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pids))


# -- processes -----------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    started: float
    ready_after: float | None = None
    pids: list[int] = field(default_factory=list)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(
    name: str,
    argv: list[str],
    url: str,
    ready_url: str,
    log: Path,
    *,
    env: dict[str, str],
    any_answer: bool = False,
) -> Proc:
    """Start a process and wait until ``ready_url`` answers 200 (any answer if asked)."""
    with log.open("ab") as out:
        started = time.perf_counter()
        popen = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=BENCH, start_new_session=True
        )
    proc = Proc(name, popen, url, started)
    deadline = started + 120
    while time.perf_counter() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode} (see its log)")
        status = http_status(ready_url, timeout=0.5)
        if status == 200 or (any_answer and status is not None):
            proc.ready_after = time.perf_counter() - started
            proc.pids = process_tree(popen.pid)
            return proc
        time.sleep(0.002)
    proc.stop()
    raise RuntimeError(f"{name} not ready within 120 s")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_"))}
    env.update(extra)
    return env


def start_upstream(work: Path) -> Proc:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [PY, str(BENCH / "upstream.py"), str(port)]
    log = work / "upstream.log"
    return spawn("upstream", argv, url, url + "/", log, env=clean_env(), any_answer=True)


def start_bare(work: Path, upstream: str) -> Proc:
    # Any answer through the proxy (upstream's 404 off its route) proves it forwards.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [PY, str(BENCH / "bareproxy.py"), str(port), upstream]
    log = work / "bare.log"
    return spawn("bare", argv, url, url + "/", log, env=clean_env(), any_answer=True)


def sidecar_config(work: Path, upstream: str) -> tuple[Path, str, str]:
    key = work / "api-key"
    key.write_text("sk-bench-upstream\n")
    api, admin = free_port(), free_port()
    config = {
        "runtime": {"namespace": "bench", "name": "sidecar"},
        "variant": {"direct": {"endpoint": upstream + "/v1"}},
        "apiKey": {"file": str(key)},
        "models": {"allow": [MODEL], "default": MODEL},
        "listen": {"api": f"127.0.0.1:{api}", "admin": f"127.0.0.1:{admin}"},
        # The limiter stays on; its budgets are set so that it admits the whole
        # load (the defaults, 500 requests/min and 64 in flight, would
        # measure the policy, not the proxy).
        "rateLimits": {
            "requestsPerMinute": 100_000_000,
            "tokensPerMinute": 100_000_000_000,
            "maxConcurrency": 4096,
        },
    }
    path = work / "sidecar.json"
    path.write_text(json.dumps(config, indent=2))
    return path, f"http://127.0.0.1:{api}", f"http://127.0.0.1:{admin}"


def start_sidecar(work: Path, upstream: str) -> Proc:
    config, api, admin = sidecar_config(work, upstream)
    argv = [str(BIN / "openai-runtime"), "sidecar", "--config", str(config)]
    return spawn("sidecar", argv, api, admin + "/readyz", work / "sidecar.log", env=clean_env())


def start_sidecar_ref(work: Path, upstream: str, ref: str) -> Proc:
    """The sidecar as committed at ``ref`` (``--compare-ref``), for before/after figures."""
    src = work / "ref-src"
    if not src.exists():
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "sidecar"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        (src / "sidecar").rename(src / "openai_runtime_sidecar")
    config, api, admin = sidecar_config(work, upstream)
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from openai_runtime_sidecar.cli import main; sys.exit(main())"
    )
    argv = [PY, "-I", "-c", code, str(src), "sidecar", "--config", str(config)]
    log = work / "sidecar-ref.log"
    return spawn("sidecar-ref", argv, api, admin + "/readyz", log, env=clean_env())


# -- LiteLLM ---------------------------------------------------------------------


def _pip(packages: list[str], log: Path) -> bool:
    with log.open("ab") as out:
        done = subprocess.run(
            [str(LITELLM_PY), "-I", "-m", "pip", "install", "--quiet", *packages],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=BENCH,
            timeout=1800,
        )
    return done.returncode == 0


def ensure_bench_venv(work: Path) -> dict[str, bool]:
    """The bench's own environment: LiteLLM's proxy and matplotlib (never in .venv)."""
    have = {"litellm": False, "matplotlib": False}
    log = work / "bench-venv.log"
    try:
        if not LITELLM_PY.exists():
            say("creating bench/.venv-litellm (once; later runs reuse it) ...")
            base = shutil.which("python3") or PY
            subprocess.run([base, "-I", "-m", "venv", str(LITELLM_VENV)], check=True, cwd=BENCH)
        for package, probe in (("litellm[proxy]", "litellm"), ("matplotlib", "matplotlib")):
            check = [str(LITELLM_PY), "-I", "-c", f"import {probe}"]
            ok = subprocess.run(check, capture_output=True, cwd=BENCH).returncode == 0
            if not ok:
                say(f"installing {package} into bench/.venv-litellm ...")
                ok = _pip([package], log)
                if not ok:
                    say(f"  {package} could not be installed (see {log.name} in the work dir)")
            have[probe] = ok
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"bench venv unavailable: {exc}")
    have["litellm"] = have["litellm"] and (LITELLM_VENV / "bin" / "litellm").exists()
    return have


def start_litellm(work: Path, upstream: str) -> Proc:
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench-upstream\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  turn_off_message_logging: true\n"
        "general_settings:\n"
        f"  master_key: {CLIENT_KEY}\n"
    )
    env = clean_env(
        LITELLM_TELEMETRY="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        DISABLE_SCHEMA_UPDATE="True",
    )
    env.pop("DATABASE_URL", None)
    argv = [
        str(LITELLM_VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    return spawn("litellm", argv, url, url + "/health/liveliness", work / "litellm.log", env=env)


# -- load ----------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: float, body: dict[str, Any]) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk.lua"),
        url + "/v1/chat/completions",
    ]
    env = {**os.environ, "BENCH_BODY": json.dumps(body)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            return result
    raise RuntimeError(f"wrk printed no figures: {done.stdout[-500:]} {done.stderr[-500:]}")


def streamgen(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    argv = [PY, str(BENCH / "streamgen.py"), url + "/v1/chat/completions"]
    argv += [str(concurrency), str(seconds)]
    env = {**os.environ, "BENCH_BODY": json.dumps(STREAM_BODY)}
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


def measure_cell(
    proc: Proc | None, url: str, c: int, seconds: float, stream: bool
) -> dict[str, Any]:
    pids = proc.pids if proc is not None else []
    cpu0 = cpu_seconds(pids)
    with RssSampler(pids) as rss:
        figures = wrk(url, c, seconds, STREAM_BODY if stream else BODY)
    cpu = cpu_seconds(pids) - cpu0
    requests = figures["requests"]
    errors = figures["errors"]
    p = figures["percentiles_us"]
    return {
        "concurrency": c,
        "stream": stream,
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


def _cell_line(name: str, item: dict[str, Any]) -> str:
    return (
        f"  {TARGETS[name]:30} {'stream' if item['stream'] else 'json  '} "
        f"c={item['concurrency']:<3} {item['rps']:8.0f} req/s  p50 {item['p50_ms']:7.2f}  "
        f"p99 {item['p99_ms']:7.2f} ms  errors {item['errors']}"
    )


def bench_all(procs: dict[str, Proc | None], urls: dict[str, str], args: Any) -> dict[str, Any]:
    """Every cell for every target, targets interleaved cell by cell, best of the rounds.

    All targets are up at once (an idle proxy costs nothing), so a burst of
    load from elsewhere on a shared machine hits one cell of each target
    rather than all cells of one; the best of ``rounds`` keeps the figure
    least disturbed by it.
    """
    out: dict[str, dict[str, Any]] = {name: {"cells": [], "ttft": []} for name in urls}
    for name, url in urls.items():
        wrk(url, 32, 1, BODY)  # warm-up: connections, caches, lazy imports
        wrk(url, 32, 1, STREAM_BODY)
        proc = procs[name]
        if proc is not None:
            out[name]["rss_after_warmup_mb"] = rss_mb(proc.pids)
    best: dict[tuple[str, bool, int], dict[str, Any]] = {}
    for round_no in range(args.rounds):
        say(f"== round {round_no + 1} of {args.rounds}")
        for stream in (False, True):
            for c in CONCURRENCY:
                for name, url in urls.items():
                    item = measure_cell(procs[name], url, c, args.seconds, stream)
                    say(_cell_line(name, item))
                    key = (name, stream, c)
                    previous = best.get(key)
                    if previous is None:
                        best[key] = item
                    else:
                        peak = max(item["peak_rss_mb"] or 0, previous["peak_rss_mb"] or 0) or None
                        if item["rps"] > previous["rps"]:
                            best[key] = item
                        best[key]["peak_rss_mb"] = peak
    for (name, _, _), item in best.items():
        out[name]["cells"].append(item)
    say("== time to first token")
    for c in TTFT_CONCURRENCY:
        for name, url in urls.items():
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
        figures = wrk(url, 32, seconds, BODY)
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


# -- report --------------------------------------------------------------------


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


def cell(results: dict[str, Any], target: str, stream: bool, c: int) -> dict[str, Any] | None:
    data = results["targets"].get(target)
    if not data or "cells" not in data:
        return None
    for item in data["cells"]:
        if item["stream"] == stream and item["concurrency"] == c:
            return dict(item)
    return None


def ttft_of(results: dict[str, Any], target: str, c: int) -> dict[str, Any] | None:
    data = results["targets"].get(target)
    if not data or "ttft" not in data:
        return None
    return next((dict(t) for t in data["ttft"] if t["concurrency"] == c), None)


def targets_check(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, goal, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool, margin: str) -> str:
        return f"PASS ({margin})" if ok else f"MISS ({margin})"

    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        for c in (32, 128):
            side, bare, lite = (cell(results, t, stream, c) for t in ("sidecar", "bare", "litellm"))
            if side and bare:
                ratio = side["rps"] / bare["rps"]
                rows.append(
                    (
                        f"throughput vs bare, {mode}, c={c}",
                        f"{ratio:.0%}",
                        ">= 70%",
                        verdict(ratio >= 0.7, f"{(ratio - 0.7) * 100:+.0f} points"),
                    )
                )
            if side and lite and lite["rps"] > 0:
                ratio = side["rps"] / lite["rps"]
                rows.append(
                    (
                        f"throughput vs LiteLLM, {mode}, c={c}",
                        f"{ratio:.1f}x",
                        ">= 20x",
                        verdict(ratio >= 20, f"{ratio / 20:.2f} of goal"),
                    )
                )
            elif side:
                rows.append((f"throughput vs LiteLLM, {mode}, c={c}", "n/a", ">= 20x", "n/a"))
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        side, direct = cell(results, "sidecar", stream, 1), cell(results, "direct", stream, 1)
        if side and direct:
            for key, goal in (("p50_ms", 0.5), ("p99_ms", 1.5)):
                added = side[key] - direct[key]
                rows.append(
                    (
                        f"added latency {key[:3]}, {mode}, c=1",
                        f"{added:.3f} ms",
                        f"<= {goal} ms",
                        verdict(added <= goal, f"{added - goal:+.3f} ms"),
                    )
                )
    side, direct = ttft_of(results, "sidecar", 1), ttft_of(results, "direct", 1)
    if side and direct:
        added = side["ttft_p50_ms"] - direct["ttft_p50_ms"]
        rows.append(
            (
                "added time to first token p50, c=1",
                f"{added:.3f} ms",
                "<= 1 ms",
                verdict(added <= 1.0, f"{added - 1.0:+.3f} ms"),
            )
        )
    start = results.get("startup")
    if start:
        idle = start["idle_rss_median_mb"]
        rows.append(
            ("idle RSS", f"{idle:.1f} MB", "<= 45 MB", verdict(idle <= 45, f"{idle - 45:+.1f} MB"))
        )
        ready = start["ready_median_s"]
        rows.append(
            (
                "start to /readyz 200 (median)",
                f"{ready:.2f} s",
                "<= 1 s",
                verdict(ready <= 1, f"{ready - 1:+.2f} s"),
            )
        )
    sidecar = results["targets"].get("sidecar", {})
    peaks = [c["peak_rss_mb"] for c in sidecar.get("cells", []) if c.get("peak_rss_mb")]
    if peaks:
        peak = max(peaks)
        rows.append(
            (
                "RSS under load (peak)",
                f"{peak:.1f} MB",
                "<= 80 MB",
                verdict(peak <= 80, f"{peak - 80:+.1f} MB"),
            )
        )
    drift = results.get("drift")
    if drift:
        d = drift["drift_mb"]
        rows.append(
            (
                f"RSS drift over {drift['requests'] // 1000}k requests",
                f"{d:+.1f} MB",
                "<= 5 MB",
                verdict(d <= 5, f"{d - 5:+.1f} MB"),
            )
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmark results", ""]
    lines += [
        "Generated by `make bench` (`bench/run.py`). Every target runs on loopback against",
        "the same instant upstream (`bench/upstream.py`), so the proxy is what is measured.",
        f"Each cell runs {results['seconds']:g} s with wrk (one thread, keep-alive); all",
        "targets run at once and are measured cell by cell in turn, and each figure is",
        f"the best of {results.get('rounds', 1)} rounds (the highest req/s, with its latencies);",
        "time to first token comes from `bench/streamgen.py`, a separate process.",
        "CPU and RSS are the proxy process's own (its whole process tree), read from /proc.",
        "The machine is shared and has few cores: load generator, upstream and proxy",
        "compete for them, so compare the columns of one run; absolute figures vary.",
        "",
        "Added latency is the target's percentile minus the floor's at the same",
        "concurrency. At c=1 the floor's own p99 is mostly scheduling noise from the",
        "shared machine (milliseconds for a request that takes 20 µs), so added p99 there",
        "can come out negative: read the p50s and the latency plot for that row.",
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
    for stream in (False, True):
        lines += ["", f"## {'Streaming (SSE, 50 chunks)' if stream else 'Non-streaming'}", ""]
        lines.append(
            "| target | c | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms "
            "| CPU s / 1k req | peak RSS MB | errors |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in CONCURRENCY:
            direct = cell(results, "direct", stream, c)
            for name in names:
                item = cell(results, name, stream, c)
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
        f"{'target':34} {'mode':6} {'c':>4} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} "
        f"{'cpu/1k':>7} {'rssMB':>6}"
    )
    for name in TARGETS:
        for stream in (False, True):
            for c in CONCURRENCY:
                item = cell(results, name, stream, c)
                if item is None:
                    continue
                say(
                    f"{TARGETS[name]:34} {'sse' if stream else 'json':6} {c:>4} {item['rps']:8.0f} "
                    f"{item['p50_ms']:7.2f} {item['p90_ms']:7.2f} {item['p99_ms']:7.2f} "
                    f"{fmt(item['cpu_s_per_1k'], 3):>7} {fmt(item['peak_rss_mb'], 1):>6}"
                )
    say("")
    for row in targets_check(results):
        say(f"  {row[0]:44} {row[1]:>10}  goal {row[2]:>8}  {row[3]}")


# -- main ----------------------------------------------------------------------


def _plot() -> bool:
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


def report_only() -> int:
    results = json.loads((BENCH / "results.json").read_text())
    for name, label in results.get("labels", {}).items():
        TARGETS[name] = label
    results["plot"] = _plot()
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
    parser.add_argument("--only", help="comma-separated targets (direct,bare,sidecar,litellm)")
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
        starters = {
            "bare": lambda: start_bare(work, upstream.url),
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
                    proc = start()
                except (RuntimeError, OSError) as exc:
                    say(f"{name}: could not start: {exc}")
                    results["notes"].append(f"{TARGETS[name]}: could not start ({exc}); n/a.")
                    continue
                procs[name], urls[name] = proc, proc.url
                say(f"{TARGETS[name]}: ready after {proc.ready_after:.2f} s")
            time.sleep(1.0)
            idle = {name: rss_mb(p.pids) for name, p in procs.items() if p is not None}
            try:
                measured = bench_all(procs, urls, args)
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
            for name in ("bare", "litellm"):
                proc = procs.get(name)
                if proc is not None:
                    proc.stop()
            side = procs.get("sidecar")
            if side is not None and args.drift_requests > 0:
                say(f"== sidecar RSS drift over {args.drift_requests} requests")
                hint = cell(results, "sidecar", False, 32)
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
        results["plot"] = _plot()
    else:
        say("matplotlib unavailable: no latency.png")
    (BENCH / "RESULTS.md").write_text(markdown(results))
    print_table(results)
    written = "bench/RESULTS.md, bench/results.json"
    say(f"\nwrote {written}" + (", bench/latency.png" if results.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
