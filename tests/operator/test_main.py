"""The ``openai-runtime operator`` command line, and the sidecar's freedom from kopf."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openai_runtime_operator.main import build_parser, main


def test_parser_scopes() -> None:
    args = build_parser().parse_args(["-n", "a", "--namespace", "b", "--standalone"])
    assert args.namespace == ["a", "b"] and args.standalone and not args.all_namespaces
    args = build_parser().parse_args(
        ["--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz"]
    )
    assert args.all_namespaces and args.liveness == "http://0.0.0.0:8080/healthz"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-n", "a", "-A"])


def test_bad_numbers_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--workers", "0"])
    assert exc.value.code == 2


def test_cli_lists_operator_and_sidecar_cli_does_not_import_kopf(tmp_path: object) -> None:
    code = (
        "import sys\n"
        "from openai_runtime_sidecar import cli\n"
        "assert 'operator' in cli.COMMANDS\n"
        "for heavy in ('kopf', 'kubernetes', 'cryptography'):\n"
        "    assert heavy not in sys.modules, f'the sidecar command imported {heavy}'\n"
        "from openai_runtime_sidecar import app\n"
        "for heavy in ('kopf', 'kubernetes', 'cryptography'):\n"
        "    assert heavy not in sys.modules, f'the sidecar imported {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), timeout=60)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from openai_runtime_sidecar.cli import main; main(['operator', '--help'])",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert "--all-namespaces" in out.stdout


def test_metrics_and_sidecar_ports() -> None:
    args = build_parser().parse_args([])
    assert (args.metrics_port, args.sidecar_admin_port) == (9465, 9464)
    args = build_parser().parse_args(["--metrics-port", "0", "--sidecar-admin-port", "19464"])
    assert (args.metrics_port, args.sidecar_admin_port) == (0, 19464)
    for bad in (["--metrics-port", "70000"], ["--sidecar-admin-port", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
