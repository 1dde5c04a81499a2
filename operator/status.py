"""What an OpenAiRuntime's status should say, computed from what the operator observed.

Reconciliation (:mod:`.reconciling`) and the Secret watch both end here: they
gather the spec (or why it is invalid) and the referenced Secret, call
:func:`resolve_credential` and :func:`next_status`, and write the result only
when it differs from the status already stored. Pure code: no kopf, no I/O,
so reconciling twice with nothing changed yields the same status, and
``lastTransitionTime`` moves only when a condition's status does.

The API key itself never leaves :func:`resolve_credential`: only its
fingerprint comes out.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from openai_runtime_sidecar.runner.credentials import fingerprint

from .models import (
    CONDITION_CREDENTIAL_RESOLVED,
    CONDITION_READY,
    Condition,
    CredentialStatus,
    OpenAiRuntimeSpec,
    OpenAiRuntimeStatus,
)

__all__ = [
    "CredentialResolution",
    "StatusChange",
    "dump_status",
    "load_status",
    "next_status",
    "resolve_credential",
]

ConditionStatus = Literal["True", "False", "Unknown"]

_SPEC_VERDICTS = frozenset({"InvalidSpec", "Reconciling"})
"""Ready reasons only reconciling the spec may change (the Secret watch keeps them)."""


@dataclass(frozen=True, slots=True)
class CredentialResolution:
    """Whether the referenced key exists; its fingerprint when it does (never the key)."""

    resolved: bool
    reason: str
    message: str
    fingerprint: str | None = None


def resolve_credential(
    secret_name: str, key: str, secret: Mapping[str, Any] | None
) -> CredentialResolution:
    """Look up ``key`` in ``secret`` (a Secret body, or None when it does not exist)."""
    if secret is None:
        return CredentialResolution(False, "SecretNotFound", f"Secret {secret_name!r} not found")
    data = secret.get("data") or {}
    encoded = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(encoded, str):
        return CredentialResolution(
            False, "KeyNotFound", f"Secret {secret_name!r} has no key {key!r}"
        )
    try:
        value = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        return CredentialResolution(
            False, "KeyInvalid", f"Secret {secret_name!r} key {key!r} is not UTF-8 text"
        )
    if not value:
        return CredentialResolution(
            False, "KeyEmpty", f"Secret {secret_name!r} key {key!r} is empty"
        )
    return CredentialResolution(
        True, "SecretFound", f"Secret {secret_name!r} key {key!r}", fingerprint(value)
    )


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The status to store, and what changed on the way (for Events and pod nudges)."""

    status: OpenAiRuntimeStatus
    rotated: bool
    """The key's fingerprint differs from the one recorded before."""
    changed_conditions: tuple[str, ...]
    """Types of conditions whose status, reason or message changed."""


def load_status(raw: Mapping[str, Any] | None) -> OpenAiRuntimeStatus:
    """The stored status; anything unreadable counts as empty (it is rewritten)."""
    try:
        return OpenAiRuntimeStatus.model_validate(dict(raw or {}))
    except ValueError:
        return OpenAiRuntimeStatus()


def dump_status(status: OpenAiRuntimeStatus) -> dict[str, Any]:
    """The status as it is written to the cluster (camelCase, JSON types, no nulls)."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def _condition(
    previous: OpenAiRuntimeStatus,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> Condition:
    old = previous.condition(type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def next_status(
    previous: OpenAiRuntimeStatus,
    *,
    generation: int | None,
    spec: OpenAiRuntimeSpec | None,
    invalid_reason: str | None = None,
    credential: CredentialResolution | None,
    now: datetime,
    spec_observed: bool = True,
) -> StatusChange:
    """The status after observing ``spec`` (None: invalid, see ``invalid_reason``)
    and ``credential`` (None: not looked at, keep what the status says).

    With ``spec_observed=False`` (the Secret watch, which does not reconcile the
    spec) the spec-derived fields, ``observedGeneration`` and an ``InvalidSpec``
    verdict are kept as they are; only the credential and readiness follow.
    """
    if not spec_observed:
        generation = previous.observed_generation
    conditions: dict[str, Condition] = {c.type: c for c in previous.conditions}
    stored = previous.credential
    rotated = False
    if credential is not None:
        if credential.resolved and credential.fingerprint is not None:
            if stored is None:
                stored = CredentialStatus(fingerprint=credential.fingerprint)
            elif stored.fingerprint != credential.fingerprint:
                rotated = True
                stored = CredentialStatus(
                    fingerprint=credential.fingerprint,
                    rotated_at=now,
                    rotations=stored.rotations + 1,
                )
        # An unresolved key keeps the last fingerprint: the sidecars keep the last key too.
        conditions[CONDITION_CREDENTIAL_RESOLVED] = _condition(
            previous,
            CONDITION_CREDENTIAL_RESOLVED,
            "True" if credential.resolved else "False",
            credential.reason,
            credential.message,
            generation,
            now,
        )
    resolved = conditions.get(CONDITION_CREDENTIAL_RESOLVED)
    ready: tuple[ConditionStatus, str, str]
    old_ready = previous.condition(CONDITION_READY)
    if not spec_observed and old_ready is None:
        ready = ("Unknown", "Reconciling", "the spec has not been reconciled yet")
    elif not spec_observed and old_ready is not None and old_ready.reason in _SPEC_VERDICTS:
        ready = (old_ready.status, old_ready.reason, old_ready.message)
    elif spec_observed and spec is None:
        ready = ("False", "InvalidSpec", invalid_reason or "the spec is invalid")
    elif resolved is None or resolved.status != "True":
        why = resolved.message if resolved is not None else "not looked up yet"
        ready = ("False", "CredentialNotResolved", f"API key not available: {why}")
    else:
        ready = ("True", "Reconciled", "sidecar config rendered and API key resolved")
    conditions[CONDITION_READY] = _condition(previous, CONDITION_READY, *ready, generation, now)
    order = [CONDITION_READY, CONDITION_CREDENTIAL_RESOLVED]
    ordered = [conditions[t] for t in order if t in conditions]
    ordered += [c for t, c in conditions.items() if t not in order]
    convergence = previous.convergence
    if rotated and convergence is not None:
        # No sidecar has confirmed the new key yet (:mod:`.convergence` counts them).
        convergence = convergence.model_copy(update={"current": 0})
    status = OpenAiRuntimeStatus(
        observed_generation=generation,
        variant=spec.variant_name if spec is not None and spec_observed else previous.variant,
        model=spec.target_model if spec is not None and spec_observed else previous.model,
        conditions=ordered,
        credential=stored,
        convergence=convergence,
    )
    changed = tuple(
        c.type
        for c in ordered
        if (old := previous.condition(c.type)) is None
        or (old.status, old.reason, old.message) != (c.status, c.reason, c.message)
    )
    return StatusChange(status=status, rotated=rotated, changed_conditions=changed)
