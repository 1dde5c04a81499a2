"""Where the sidecar's time goes under load: py-spy samples, summed per function.

Starts the instant upstream and a sidecar (as ``run.py`` does), drives it with
wrk at concurrency 32, samples it with py-spy (installed into the bench's own
environment on first use) and prints the functions with the most samples,
inclusive and self. Usage::

    python bench/profile.py [--stream | --mode MODE] [--seconds 10] [--top 40]

``--mode`` is one of ``common.MODES`` (``json``, ``stream``, ``embeddings``,
``responses``, ``responses-stream``); ``--stream`` is ``--mode stream``.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import common  # bench/common.py, loadgen.py and targets.py, beside this file
import loadgen
import targets


def _key(frame: str) -> str:
    # py-spy's raw format: "function (path/to/file.py:line)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name


def summarise(raw: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_key(f) for f in stack.split(";")]
        for key in set(frames):
            inclusive[key] += n
        own[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive:"]
    out += [f"  {n / total:6.1%}  {k}" for k, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {n / total:6.1%}  {k}" for k, n in own.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stream", action="store_true", help="profile streamed chat calls")
    parser.add_argument("--mode", choices=list(common.MODES), default="json")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    py_spy = common.LITELLM_VENV / "bin" / "py-spy"
    if not py_spy.exists():
        if not common.LITELLM_PY.exists():
            subprocess.run(
                [sys.executable, "-I", "-m", "venv", str(common.LITELLM_VENV)], check=True
            )
        if not targets._pip(["py-spy"], Path(tempfile.gettempdir()) / "bench-py-spy.log"):
            print("py-spy could not be installed")
            return 1
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        upstream = targets.start_upstream(work)
        sidecar = targets.start_sidecar(work, upstream.url)
        try:
            mode = common.MODES["stream" if args.stream else args.mode]
            loadgen.wrk(sidecar.url, 32, 2, mode)  # warm-up
            load = threading.Thread(
                target=loadgen.wrk, args=(sidecar.url, 32, args.seconds + 2, mode), daemon=True
            )
            load.start()
            raw = work / "profile.txt"
            record = [str(py_spy), "record", "-p", str(sidecar.popen.pid)]
            record += ["-d", str(args.seconds), "-r", "250", "-f", "raw", "-o", str(raw)]
            subprocess.run([*record, "--nonblocking"], check=True, capture_output=True)
            load.join()
            print(summarise(raw, args.top))
        finally:
            sidecar.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
