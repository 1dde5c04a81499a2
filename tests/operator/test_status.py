"""The status arithmetic, without a cluster: idempotence, transitions, rotations."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from openai_runtime_operator.models import ConvergenceStatus, OpenAiRuntimeSpec, OpenAiRuntimeStatus
from openai_runtime_operator.status import (
    dump_status,
    load_status,
    next_status,
    resolve_credential,
)
from openai_runtime_sidecar.runner.credentials import fingerprint

from ..support import NEW_KEY, OLD_KEY

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = OpenAiRuntimeSpec.model_validate(
    {
        "variant": {"azure": {"resource": "r", "deployment": "gpt-4o-prod"}},
        "apiKeySecretRef": {"name": "k"},
    }
)


def secret(value: str | None, key: str = "api-key") -> dict[str, Any]:
    data = {} if value is None else {key: base64.b64encode(value.encode()).decode()}
    return {"metadata": {"name": "k"}, "data": data}


def test_resolution_reasons_and_fingerprint() -> None:
    assert resolve_credential("k", "api-key", None).reason == "SecretNotFound"
    assert resolve_credential("k", "api-key", secret(OLD_KEY, "other")).reason == "KeyNotFound"
    assert resolve_credential("k", "api-key", secret("  \n")).reason == "KeyEmpty"
    bad = {"data": {"api-key": "%%%not-base64"}}
    assert resolve_credential("k", "api-key", bad).reason == "KeyInvalid"
    found = resolve_credential("k", "api-key", secret(OLD_KEY + "\n"))
    assert found.resolved and found.fingerprint == fingerprint(OLD_KEY)
    assert OLD_KEY not in repr(found)


def test_reconciling_twice_changes_nothing() -> None:
    credential = resolve_credential("k", "api-key", secret(OLD_KEY))
    first = next_status(load_status(None), generation=1, spec=SPEC, credential=credential, now=T0)
    second = next_status(
        first.status, generation=1, spec=SPEC, credential=credential, now=T0 + timedelta(hours=1)
    )
    assert dump_status(second.status) == dump_status(first.status)
    assert second.changed_conditions == () and not second.rotated
    raw = dump_status(first.status)
    assert raw["variant"] == "azure" and raw["model"] == "gpt-4o-prod"
    assert raw["observedGeneration"] == 1
    assert raw["credential"] == {"fingerprint": fingerprint(OLD_KEY), "rotations": 0}
    assert load_status(raw) == first.status  # round-trips through the cluster's JSON


def test_transition_time_moves_only_when_status_does() -> None:
    missing = resolve_credential("k", "api-key", None)
    first = next_status(load_status(None), generation=1, spec=SPEC, credential=missing, now=T0)
    later = T0 + timedelta(minutes=5)
    # Same status (False), different reason: the transition time stays.
    wrong_key = resolve_credential("k", "api-key", secret(OLD_KEY, "other"))
    second = next_status(first.status, generation=1, spec=SPEC, credential=wrong_key, now=later)
    cond = second.status.condition("CredentialResolved")
    assert cond is not None and cond.reason == "KeyNotFound" and cond.last_transition_time == T0
    third = next_status(
        second.status,
        generation=1,
        spec=SPEC,
        credential=resolve_credential("k", "api-key", secret(OLD_KEY)),
        now=later,
    )
    cond = third.status.condition("CredentialResolved")
    assert cond is not None and cond.status == "True" and cond.last_transition_time == later
    ready = third.status.condition("Ready")
    assert ready is not None and ready.status == "True" and ready.last_transition_time == later


def test_rotation_counts_and_unresolved_keeps_the_fingerprint() -> None:
    old = resolve_credential("k", "api-key", secret(OLD_KEY))
    new = resolve_credential("k", "api-key", secret(NEW_KEY))
    start = next_status(load_status(None), generation=1, spec=SPEC, credential=old, now=T0)
    rotated = next_status(start.status, generation=1, spec=SPEC, credential=new, now=T0)
    assert rotated.rotated
    assert rotated.status.credential is not None
    assert rotated.status.credential.rotations == 1
    assert rotated.status.credential.rotated_at == T0
    gone = next_status(
        rotated.status,
        generation=1,
        spec=SPEC,
        credential=resolve_credential("k", "api-key", None),
        now=T0,
    )
    assert gone.status.credential == rotated.status.credential and not gone.rotated
    ready = gone.status.condition("Ready")
    assert ready is not None and ready.reason == "CredentialNotResolved"


def test_secret_watch_keeps_spec_verdicts() -> None:
    old = resolve_credential("k", "api-key", secret(OLD_KEY))
    # Before the first reconciliation, a Secret event cannot declare the runtime Ready.
    early = next_status(
        load_status(None), generation=None, spec=SPEC, credential=old, now=T0, spec_observed=False
    )
    ready = early.status.condition("Ready")
    assert ready is not None and ready.status == "Unknown"
    assert early.status.observed_generation is None
    invalid = next_status(
        load_status(None), generation=3, spec=None, invalid_reason="bad", credential=old, now=T0
    )
    after = next_status(
        invalid.status, generation=None, spec=None, credential=old, now=T0, spec_observed=False
    )
    ready = after.status.condition("Ready")
    assert ready is not None and ready.reason == "InvalidSpec" and ready.message == "bad"
    assert after.status.observed_generation == 3


def test_rotation_resets_current_pods_and_keeps_the_count() -> None:
    old = resolve_credential("k", "api-key", secret(OLD_KEY))
    new = resolve_credential("k", "api-key", secret(NEW_KEY))
    start = next_status(OpenAiRuntimeStatus(), generation=1, spec=SPEC, credential=old, now=T0)
    converged = start.status.model_copy(
        update={"convergence": ConvergenceStatus(pods=3, current=3)}
    )
    same = next_status(converged, generation=1, spec=SPEC, credential=old, now=T0)
    assert same.status.convergence == ConvergenceStatus(pods=3, current=3)
    rotated = next_status(converged, generation=1, spec=SPEC, credential=new, now=T0)
    assert rotated.status.convergence == ConvergenceStatus(pods=3, current=0)
