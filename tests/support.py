"""Helpers shared by tests: test keys and a Secret volume written the kubelet way."""

from __future__ import annotations

from openai_runtime_sidecar.secretvolume import SecretVolume

OLD_KEY = "sk-test-old-0000000000000000"
NEW_KEY = "sk-test-new-1111111111111111"


__all__ = ["NEW_KEY", "OLD_KEY", "SecretVolume"]
