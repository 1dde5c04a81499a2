"""The status arithmetic, without a cluster: idempotence, transitions, rotations,
and the merge patch that writes it (nulls for what is gone, nothing when equal)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_operator.models import ConvergenceStatus, OpenAiRuntimeSpec, OpenAiRuntimeStatus
from openai_runtime_operator.status import (
    CredentialResolution,
    Observation,
    SpecVerdict,
    StatusChange,
    dump_status,
    load_status,
    merge_patch,
    next_status,
    resolve_credential,
    status_patch,
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
DIRECT = {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "k"}}


def secret(value: str | None, key: str = "api-key") -> dict[str, Any]:
    data = {} if value is None else {key: base64.b64encode(value.encode()).decode()}
    return {"metadata": {"name": "k"}, "data": data}


def key(value: str | None) -> CredentialResolution:
    return resolve_credential("k", "api-key", None if value is None else secret(value))


def reconciled(
    previous: OpenAiRuntimeStatus,
    credential: CredentialResolution | None,
    *,
    now: datetime = T0,
    generation: int | None = 1,
    spec: OpenAiRuntimeSpec | None = SPEC,
    invalid: str | None = None,
) -> StatusChange:
    """What reconciling the spec observes: a verdict on it, and the key."""
    verdict = SpecVerdict(generation, spec, invalid)
    return next_status(previous, Observation(spec=verdict, credential=credential), now=now)


def watched(
    previous: OpenAiRuntimeStatus, credential: CredentialResolution, now: datetime = T0
) -> StatusChange:
    """What the Secret watch observes: the key only, the spec not looked at."""
    return next_status(previous, Observation(spec=None, credential=credential), now=now)


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
    first = reconciled(load_status(None), key(OLD_KEY))
    second = reconciled(first.status, key(OLD_KEY), now=T0 + timedelta(hours=1))
    assert dump_status(second.status) == dump_status(first.status)
    assert second.changed_conditions == () and not second.rotated
    raw = dump_status(first.status)
    assert raw["variant"] == "azure" and raw["model"] == "gpt-4o-prod"
    assert raw["observedGeneration"] == 1
    assert raw["credential"] == {"fingerprint": fingerprint(OLD_KEY), "rotations": 0}
    assert load_status(raw) == first.status  # round-trips through the cluster's JSON
    # Stored as written: the writer has nothing to send.
    assert status_patch(raw, dump_status(second.status)) is None


def test_transition_time_moves_only_when_status_does() -> None:
    first = reconciled(load_status(None), key(None))
    later = T0 + timedelta(minutes=5)
    # Same status (False), different reason: the transition time stays.
    wrong_key = resolve_credential("k", "api-key", secret(OLD_KEY, "other"))
    second = reconciled(first.status, wrong_key, now=later)
    cond = second.status.condition("CredentialResolved")
    assert cond is not None and cond.reason == "KeyNotFound" and cond.last_transition_time == T0
    assert second.changed_conditions == ("Ready", "CredentialResolved")  # Ready's message too
    third = reconciled(second.status, key(OLD_KEY), now=later)
    cond = third.status.condition("CredentialResolved")
    assert cond is not None and cond.status == "True" and cond.last_transition_time == later
    ready = third.status.condition("Ready")
    assert ready is not None and ready.status == "True" and ready.last_transition_time == later


def test_rotation_counts_and_unresolved_keeps_the_fingerprint() -> None:
    start = reconciled(load_status(None), key(OLD_KEY))
    rotated = reconciled(start.status, key(NEW_KEY))
    assert rotated.rotated
    assert rotated.status.credential is not None
    assert rotated.status.credential.rotations == 1
    assert rotated.status.credential.rotated_at == T0
    gone = reconciled(rotated.status, key(None))
    assert gone.status.credential == rotated.status.credential and not gone.rotated
    ready = gone.status.condition("Ready")
    assert ready is not None and ready.reason == "CredentialNotResolved"
    # The Secret watch counts rotations the same way.
    again = watched(gone.status, key(OLD_KEY))
    assert again.rotated and again.status.credential is not None
    assert again.status.credential.rotations == 2


def test_secret_watch_keeps_spec_verdicts_and_fields() -> None:
    # Before the first reconciliation, a Secret event cannot declare the runtime Ready.
    early = watched(load_status(None), key(OLD_KEY))
    ready = early.status.condition("Ready")
    assert ready is not None and ready.status == "Unknown" and ready.reason == "Reconciling"
    assert early.status.observed_generation is None
    invalid = reconciled(load_status(None), key(OLD_KEY), generation=3, spec=None, invalid="bad")
    after = watched(invalid.status, key(NEW_KEY))
    ready = after.status.condition("Ready")
    assert ready is not None and ready.reason == "InvalidSpec" and ready.message == "bad"
    assert after.status.observed_generation == 3
    # A valid runtime: the watch keeps what only the spec says, follows the key.
    valid = reconciled(load_status(None), key(OLD_KEY), generation=4)
    followed = watched(valid.status, key(None))
    assert (followed.status.variant, followed.status.model) == ("azure", "gpt-4o-prod")
    assert followed.status.observed_generation == 4
    ready = followed.status.condition("Ready")
    assert ready is not None and ready.reason == "CredentialNotResolved"


def test_rotation_resets_current_pods_and_keeps_the_count() -> None:
    start = reconciled(OpenAiRuntimeStatus(), key(OLD_KEY))
    converged = start.status.model_copy(
        update={"convergence": ConvergenceStatus(pods=3, current=3)}
    )
    same = reconciled(converged, key(OLD_KEY))
    assert same.status.convergence == ConvergenceStatus(pods=3, current=3)
    rotated = reconciled(converged, key(NEW_KEY))
    assert rotated.status.convergence == ConvergenceStatus(pods=3, current=0)


def test_removed_default_model_nulls_status_model() -> None:
    with_default = OpenAiRuntimeSpec.model_validate({**DIRECT, "models": {"default": "m"}})
    without = OpenAiRuntimeSpec.model_validate(DIRECT)
    before = reconciled(load_status(None), key(OLD_KEY), spec=with_default)
    stored = dump_status(before.status)
    assert stored["model"] == "m"
    after = reconciled(load_status(stored), key(OLD_KEY), generation=2, spec=without)
    assert after.status.model is None
    patch = status_patch(stored, dump_status(after.status))
    assert patch is not None
    assert patch["status"]["model"] is None and patch["status"]["observedGeneration"] == 2
    # Convergence, written by .convergence alone, is carried over, not nulled.
    stored["convergence"] = {"pods": 2, "current": 2}
    again = reconciled(load_status(stored), key(OLD_KEY), generation=2, spec=without)
    patch = status_patch(stored, dump_status(again.status))
    assert patch is not None and "convergence" not in patch["status"]


def test_merge_patch_nulls_what_is_gone_and_replaces_lists() -> None:
    old = {
        "a": 1,
        "gone": "x",
        "nested": {"keep": 1, "drop": 2, "deep": {"x": 1, "y": 2}},
        "list": [1, 2, 3],
        "same": {"k": [1]},
        "obj": {"k": 1},
    }
    new = {
        "a": 1,
        "nested": {"keep": 1, "deep": {"x": 1}, "added": True},
        "list": [1, 2],
        "same": {"k": [1]},
        "obj": "now a string",
        "fresh": {"k": 1},
    }
    assert merge_patch(old, new) == {
        "gone": None,
        "nested": {"drop": None, "deep": {"y": None}, "added": True},
        "list": [1, 2],
        "obj": "now a string",
        "fresh": {"k": 1},
    }
    assert merge_patch(new, new) == {}
    assert status_patch(None, {}) is None
    assert status_patch({}, {}) is None
    assert status_patch(None, {"a": 1}) == {"status": {"a": 1}}
    assert status_patch("garbage", {"a": 1}) == {"status": {"a": 1}}
    assert status_patch({"stale": {"x": 1}}, {"a": 1}) == {"status": {"stale": None, "a": 1}}


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, section 2, as written there."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply_merge_patch(result.get(name), value)
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)
documents = st.dictionaries(st.text(max_size=2), json_values, max_size=5)


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


@given(documents, documents)
def test_merge_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    new = _no_nulls(new)  # a status has no nulls (they would mean "delete")
    patch = merge_patch(old, new)
    assert apply_merge_patch(old, patch) == new
    assert (patch == {}) == (old == new)


def test_unreadable_fields_cost_only_themselves() -> None:
    good = dump_status(reconciled(load_status(None), key(OLD_KEY)).status)
    good["credential"]["rotations"] = 4
    broken = {
        **good,
        "variant": "neither",
        "conditions": [*good["conditions"], {"type": "Odd", "status": "Maybe"}],
        "stale": "from an older operator",
    }
    loaded = load_status(broken)
    assert loaded.variant is None
    assert loaded.credential is not None and loaded.credential.rotations == 4
    assert [c.type for c in loaded.conditions] == ["Ready", "CredentialResolved"]
    assert load_status("not an object") == OpenAiRuntimeStatus()
    # Rewritten: the unreadable and unknown fields get nulls, the rest stays.
    again = reconciled(loaded, key(OLD_KEY))
    patch = status_patch(broken, dump_status(again.status))
    assert patch is not None
    assert patch["status"]["stale"] is None and patch["status"]["variant"] == "azure"
    assert "credential" not in patch["status"]
    assert len(patch["status"]["conditions"]) == 2
