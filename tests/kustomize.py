"""deploy/'s kustomizations as the real ``kubectl kustomize`` builds them.

What ``kubectl apply -k`` applies is kustomize's output, and kustomize has rules
of its own (load restrictions, no overlay inside the directory of its base,
patch targets that must match). A Python stand-in for it once accepted an
overlay that kubectl refuses, so the tests build with kubectl itself, and skip,
saying why, where it is not installed.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBECTL_MISSING = "kubectl not found: the kustomizations are built with the real kubectl kustomize"

Obj = dict[str, Any]


def kustomizations() -> list[Path]:
    """Every directory under deploy/ (deploy/ included) that holds a kustomization.yaml."""
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def label(directory: Path) -> str:
    """``deploy/cert-manager`` for a kustomization directory: test ids and messages."""
    return directory.relative_to(ROOT).as_posix()


def build(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` yields (a copy: mutate freely).

    Skips the calling test when kubectl is missing; fails it, with kustomize's
    message, when the build does.
    """
    if shutil.which("kubectl") is None:
        pytest.skip(KUBECTL_MISSING)
    return copy.deepcopy(_build(directory.resolve()))


@functools.cache
def _build(directory: Path) -> list[Obj]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {label(directory)} failed:\n{done.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
    assert objects, f"kubectl kustomize {label(directory)} yields nothing"
    for obj in objects:
        assert isinstance(obj, dict), f"{label(directory)}: a document is not a mapping"
    return objects
