"""The processes under test: start, wait until ready, stop, and read their /proc figures.

Where it sits in the flow::

    run.py --start_upstream() / start_bare() / start_sidecar() / start_litellm()--> Proc
        spawn(): Popen in its own session --poll ready URL--> Proc(ready_after, pids)
    loadgen.py / run.py --cpu_seconds() / rss_mb() / RssSampler--> /proc/<pid>/stat(m)

Each target listens on a free loopback port; start-up time is process start
to the first 200 from its readiness URL. LiteLLM and matplotlib live in the
bench's own virtual environment (``bench/.venv-litellm``), made here on first
use, never in the project's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BENCH,
    BIN,
    CLIENT_KEY,
    EMBED_MODEL,
    LITELLM_PY,
    LITELLM_VENV,
    MODEL,
    PY,
    ROOT,
    say,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


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


def _start_proxy(work: Path, upstream: str, name: str) -> Proc:
    # Any answer through the proxy (upstream's 404 off its route) proves it forwards.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [PY, str(BENCH / f"{name}proxy.py"), str(port), upstream]
    return spawn(name, argv, url, url + "/", work / f"{name}.log", env=clean_env(), any_answer=True)


def start_bare(work: Path, upstream: str) -> Proc:
    return _start_proxy(work, upstream, "bare")


def start_minimal(work: Path, upstream: str) -> Proc:
    """The bare pass-through plus what a cost-reporting proxy cannot skip (minimalproxy.py)."""
    return _start_proxy(work, upstream, "minimal")


def sidecar_config(work: Path, upstream: str) -> tuple[Path, str, str]:
    key = work / "api-key"
    key.write_text("sk-bench-upstream\n")
    api, admin = free_port(), free_port()
    config = {
        "runtime": {"namespace": "bench", "name": "sidecar"},
        "variant": {"direct": {"endpoint": upstream + "/v1"}},
        "apiKey": {"file": str(key)},
        "models": {"allow": [MODEL, EMBED_MODEL], "default": MODEL},
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
    models = "".join(
        f"  - model_name: {name}\n"
        "    litellm_params:\n"
        f"      model: openai/{name}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench-upstream\n"
        for name in (MODEL, EMBED_MODEL)
    )
    config.write_text(
        "model_list:\n"
        f"{models}"
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
