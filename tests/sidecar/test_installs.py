"""Two installs: the sidecar without the operator's dependencies, the operator as an extra.

Each check runs a fresh interpreter: the test process itself has already
imported the operator (other tests do), so only a new one shows what the
sidecar's own path loads. The "missing extra" is a real import failure, made
by a meta-path finder that refuses the module, not a stand-in for our code.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from openai_runtime_sidecar import cli

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ONLY = {"kopf", "kubernetes", "cryptography", "pykube", "pydantic", "pydantic_core"}
"""Top-level modules the sidecar must never load (pykube: kopf's other client)."""
FAKES = "openai_runtime_sidecar.fakes"
"""The test doubles and the demo: the sidecar's serving path must never load them."""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Not the repository root as the working directory: its `operator/` folder
    # would shadow the standard library's `operator` module.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_sidecar_path_loads_none_of_the_operators_dependencies(tmp_path: Path) -> None:
    done = _python(
        """
        import contextlib, io, json, sys
        import openai_runtime_sidecar.app, openai_runtime_sidecar.cli
        # The CLI's sidecar path as far as it goes without serving.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            openai_runtime_sidecar.cli.main(["sidecar", "--help"])
        print(json.dumps(sorted(sys.modules)))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    loaded = {name.partition(".")[0] for name in modules}
    assert "openai_runtime_sidecar" in loaded  # the check saw the imports at all
    assert not loaded & OPERATOR_ONLY
    assert importlib.util.find_spec(FAKES) is not None  # the name below is the real one
    assert not {name for name in modules if name == FAKES or name.startswith(FAKES + ".")}


# A finder first on sys.meta_path that refuses one module (and its submodules)
# the way a missing install does: ModuleNotFoundError naming it.
_WITHOUT = """
import sys

BLOCKED = {blocked!r}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Refuse())
from openai_runtime_sidecar.cli import main

sys.exit(main({argv!r}))
"""
OPERATOR_ARGV = ["operator", "--standalone", "-A"]


@pytest.mark.parametrize(
    ("blocked", "named"),
    [
        ("kopf", "kopf"),
        # Lazily imported by the webhook: caught up front, not once it starts.
        ("cryptography", "cryptography"),
        # The top-level package is there, its import still fails.
        ("kopf._core", "kopf"),
        ("pydantic", "pydantic"),
    ],
)
def test_the_operator_without_its_extra_says_how_to_install_it(
    tmp_path: Path, blocked: str, named: str
) -> None:
    done = _python(_WITHOUT.format(blocked=blocked, argv=OPERATOR_ARGV), tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert "Traceback" not in line
    assert line.startswith("openai-runtime operator: ")
    assert named in line
    assert "pip install 'openai-runtime[operator]'" in line
    assert cli.OPERATOR_INSTALL in line


def test_the_crd_command_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    done = _python(_WITHOUT.format(blocked="pydantic", argv=["crd"]), tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"openai-runtime crd: pydantic not installed; the operator is an optional extra: "
        f"{cli.OPERATOR_INSTALL}"
    ]


def test_the_extra_names_what_the_operator_imports() -> None:
    # pyproject.toml and the CLI's up-front check list the same distributions.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    names = {re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0].lower() for req in extras["operator"]}
    assert names == set(cli.OPERATOR_EXTRA)
    assert not names & {
        re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0].lower()
        for req in pyproject["project"]["dependencies"]
    }
    # `make test` installs `.[dev]`: it must bring the operator along.
    assert "openai-runtime[operator]" in extras["dev"]


def test_an_idle_sidecar_loads_neither_the_trace_sdk_nor_a_yaml_parser(tmp_path: Path) -> None:
    """Without a trace exporter no span is recorded, and the operator writes JSON config."""
    config = {
        "runtime": {"namespace": "team-a", "name": "chat"},
        "variant": {"direct": {"endpoint": "http://127.0.0.1:9/v1"}},
        "apiKey": {"file": str(tmp_path / "api-key")},
        "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config, indent=2), encoding="utf-8")
    done = _python(
        f"""
        import json, sys
        from openai_runtime_sidecar.app import Sidecar, load_sidecar_config
        config = load_sidecar_config({str(tmp_path / "config.yaml")!r})
        Sidecar(config, config_path=None)
        print(json.dumps(sorted(sys.modules)))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert "openai_runtime_sidecar.telemetry" in modules
    assert not {m for m in modules if m == "yaml" or m.startswith("opentelemetry.sdk.trace")}
    # A loaded and validated config, and still no pydantic: it is the operator's.
    assert not {m.partition(".")[0] for m in modules} & {"pydantic", "pydantic_core"}
