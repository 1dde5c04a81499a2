"""The operator as it ships: the ``openai-runtime`` console script in a child process.

The arguments and environment come from the operator Deployment in
``deploy/base`` (read, never copied), the cluster objects it expects (the
namespace, the peering object, the webhook configuration) from the same
manifests, and the workstation recipe from the README. The child logs in
through a kubeconfig pointing at the kmock emulator, which runs on the test's
event loop; each replica gets its own token, so every request the emulator
received can be attributed to the replica that sent it.

Only ports are changed: the machine is shared and two replicas run side by
side, so each listener of the manifest gets a free port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .. import kustomize
from ..support import free_port

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
README = ROOT / "README.md"
CONSOLE_SCRIPT = Path(sys.executable).with_name("openai-runtime")
TOKEN_HEADER = "Authorization"

__all__ = [
    "BASE",
    "README",
    "Replica",
    "applied",
    "free_port",
    "manifest",
    "operator_container",
    "readme_workstation_command",
    "replica_of",
    "shipped_args",
    "write_kubeconfig",
]


def shipped_objects() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/`` applies (the README's cluster recipe).

    Built by kubectl where it is installed; elsewhere the base's files, which
    are the same objects (the base has no transformers, and a deploy test
    compares both where kubectl exists).
    """
    if shutil.which("kubectl") is not None:
        return kustomize.build(kustomize.DEPLOY)
    return [
        doc
        for path in sorted(BASE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def manifest(kind: str, name: str | None = None) -> dict[str, Any]:
    """The shipped object of ``kind`` (and ``name``, where the kind has several)."""
    return next(
        obj
        for obj in shipped_objects()
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    )


def operator_container() -> dict[str, Any]:
    deployment = manifest("Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "operator")


def shipped_args(ports: Mapping[str, int]) -> list[str]:
    """The container's args with each named container port moved to ``ports[name]``.

    A port the args do not name (the metrics port is the flag's default) is
    passed with its flag, so the child never binds the manifest's fixed port.
    """
    container = operator_container()
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = [str(a) for a in container["args"]]
    for name, new in ports.items():
        old = str(declared[name])
        hits = [i for i, a in enumerate(args) if re.search(rf"[:=]{old}\b", a)]
        for i in hits:
            args[i] = re.sub(rf"([:=]){old}\b", rf"\g<1>{new}", args[i])
        if not hits:
            args.append(f"--{name}-port={new}")
    return args


def applied(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as the API server stores it: ``stringData`` folded into ``data``."""
    stored = json.loads(json.dumps(obj))
    string_data = stored.pop("stringData", None) or {}
    if string_data:
        data = stored.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    return stored


def write_kubeconfig(
    path: Path, server: str, *, token: str | None = None, exec_cmd: Any = None
) -> Path:
    """A kubeconfig for ``server``: a static token, or an exec credential plugin."""
    user: dict[str, Any] = {"token": token} if token else {"exec": exec_cmd}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "replica", "user": user}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "replica"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def readme_workstation_command() -> list[str]:
    """The ``openai-runtime operator ...`` line of the README's workstation recipe."""
    section = README.read_text().split("\n## Operator\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    line = next(ln for ln in block.splitlines() if ln.startswith("openai-runtime operator"))
    return line.split("#", 1)[0].split()[1:]


class Replica:
    """One operator process; its logs go to a file, its requests carry its own token."""

    def __init__(self, name: str, workdir: Path, server: str, args: list[str]) -> None:
        self.name = name
        self.token = f"token-{name}"
        self.args = args
        self.log = workdir / f"{name}.log"
        self.kubeconfig = write_kubeconfig(workdir / f"{name}.kubeconfig", server, token=self.token)
        self.env = self.child_env(workdir)
        self.process: asyncio.subprocess.Process | None = None

    def child_env(self, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update({"HOME": str(workdir), "KUBECONFIG": str(self.kubeconfig)})
        for var in operator_container().get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[var["name"]] = self.name  # the pod's name
            elif (
                var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                == "metadata.namespace"
            ):
                env[var["name"]] = manifest("Deployment")["metadata"]["namespace"]
        return env

    async def start(self) -> None:
        assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} is not installed"
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(CONSOLE_SCRIPT),
                *self.args,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    async def wait(self, within: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout=within)

    async def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(sig)
        try:
            await self.wait(within)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def get(self, port: int, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    return response.status, await response.text()
            except aiohttp.ClientError:
                return 0, ""


def replica_of(request: Any, replicas: list[Replica]) -> str | None:
    """Which replica sent ``request`` to the emulator (by its bearer token)."""
    headers = {str(k).lower(): v for k, v in (request.headers or {}).items()}
    header = headers.get(TOKEN_HEADER.lower(), "")
    for replica in replicas:
        if header == f"Bearer {replica.token}":
            return replica.name
    return None


async def eventually(
    check: Callable[[], Any],
    what: str,
    within: float,
    replicas: list[Replica] = (),  # type: ignore[assignment]
) -> Any:
    """Poll ``check`` until truthy; on time-out, fail with the replicas' last log lines."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last
        await asyncio.sleep(0.05)
    tails = "\n".join(
        f"--- {r.name}:\n" + "\n".join(r.output().splitlines()[-15:]) for r in replicas
    )
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tails}")
