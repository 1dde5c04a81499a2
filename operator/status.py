"""What an OpenAiRuntime's status should say, and the one place that writes it.

Reconciliation (:mod:`.reconciling`) and the Secret watch (:mod:`.rotation`)
both end in :func:`write_status`: under the runtime's lock it reads the runtime
afresh, lets the caller observe it (an :class:`Observation`: the verdict on
the spec, or none when the caller does not reconcile the spec, and the
resolved key), computes the next status with :func:`next_status` and sends
the merge patch that turns the stored status into it (:func:`status_patch`:
``null`` for every field that no longer applies), or nothing at all when
nothing changed. The callers differ only in what they observe.

Everything but :func:`write_status` is pure (no kopf, no I/O), so observing
the same thing twice yields the same status, and ``lastTransitionTime``
moves only when a condition's status does. ``status.convergence`` is written
by :mod:`.convergence` under the same lock; the next status carries it over
(reset to ``current=0`` on a rotation), so it is never nulled here.
``status.spend``, ``status.backends`` and the ``BudgetWarning`` condition
are written by :mod:`.budgeting`, likewise; they go only when the spec sets
no budget (no fallbacks).

The API key itself never leaves :func:`resolve_credential`: only its
fingerprint comes out.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from openai_runtime_sidecar.runner.credentials import fingerprint

from .kubeapi import resource_path
from .models import (
    API_VERSION,
    CONDITION_BUDGET_WARNING,
    CONDITION_CREDENTIAL_RESOLVED,
    CONDITION_READY,
    PLURAL,
    Condition,
    ConvergenceStatus,
    CredentialStatus,
    OpenAiRuntimeSpec,
    OpenAiRuntimeStatus,
)

if TYPE_CHECKING:
    from .context import OperatorContext

__all__ = [
    "CredentialResolution",
    "Observation",
    "Observe",
    "SpecVerdict",
    "StatusChange",
    "StatusWrite",
    "dump_status",
    "load_status",
    "merge_patch",
    "next_condition",
    "next_credential",
    "next_status",
    "readiness",
    "resolve_credential",
    "spec_fields",
    "status_patch",
    "write_status",
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
class SpecVerdict:
    """Reconciliation's reading of the spec: parsed, or why it is invalid."""

    generation: int | None
    spec: OpenAiRuntimeSpec | None
    """None: the spec is invalid (see :attr:`invalid_reason`)."""
    invalid_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """What a caller of :func:`write_status` saw of one runtime."""

    spec: SpecVerdict | None
    """None: the spec was not looked at (the Secret watch). The spec-derived
    fields, ``observedGeneration`` and a spec verdict on Ready then stay."""
    credential: CredentialResolution | None
    """None: no Secret was looked up; ``CredentialResolved`` stays as it is."""


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The status to store, and what changed on the way (for Events and pod nudges)."""

    status: OpenAiRuntimeStatus
    rotated: bool
    """The key's fingerprint differs from the one recorded before."""
    changed_conditions: tuple[str, ...]
    """Types of conditions whose status, reason or message changed."""


def _load_partially(data: Mapping[str, Any]) -> OpenAiRuntimeStatus:
    kept: dict[str, Any] = {}
    for name, info in OpenAiRuntimeStatus.model_fields.items():
        alias = info.alias or name
        if alias not in data:
            continue
        value = data[alias]
        if alias == "conditions" and isinstance(value, list):
            value = [c for c in value if _readable({"conditions": [c]})]
        if _readable({alias: value}):
            kept[alias] = value
    return OpenAiRuntimeStatus.model_validate(kept)


def _readable(data: Mapping[str, Any]) -> bool:
    try:
        OpenAiRuntimeStatus.model_validate(dict(data))
    except ValueError:
        return False
    return True


def load_status(raw: Any) -> OpenAiRuntimeStatus:
    """The stored status; what is unreadable counts as absent (and is rewritten).

    Field by field: one unreadable field (or condition) must not cost the
    others, least of all the credential's rotation count.
    """
    if not isinstance(raw, Mapping):
        return OpenAiRuntimeStatus()
    try:
        return OpenAiRuntimeStatus.model_validate(dict(raw))
    except ValueError:
        return _load_partially(raw)


def dump_status(status: OpenAiRuntimeStatus) -> dict[str, Any]:
    """The status as it is written to the cluster (camelCase, JSON types, no nulls)."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def next_condition(
    previous: OpenAiRuntimeStatus,
    type_: str,
    verdict: tuple[ConditionStatus, str, str],
    generation: int | None,
    now: datetime,
) -> Condition:
    """Condition ``type_`` with ``verdict``; its transition time moves only with its status."""
    status, reason, message = verdict
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


def next_credential(
    stored: CredentialStatus | None, resolution: CredentialResolution | None, now: datetime
) -> tuple[CredentialStatus | None, bool]:
    """The credential to record, and whether that is a rotation.

    An unresolved key keeps the last fingerprint: the sidecars keep the last key too.
    """
    if resolution is None or not resolution.resolved or resolution.fingerprint is None:
        return stored, False
    if stored is None:
        return CredentialStatus(fingerprint=resolution.fingerprint), False
    if stored.fingerprint == resolution.fingerprint:
        return stored, False
    rotated = CredentialStatus(
        fingerprint=resolution.fingerprint, rotated_at=now, rotations=stored.rotations + 1
    )
    return rotated, True


def spec_fields(
    previous: OpenAiRuntimeStatus, spec: SpecVerdict | None
) -> tuple[int | None, str | None, str | None]:
    """``observedGeneration``, ``variant`` and ``model``: from the spec when it was
    observed (absent when it is invalid or names no model), else as they were."""
    if spec is None:
        return previous.observed_generation, previous.variant, previous.model
    if spec.spec is None:
        # An invalid spec says nothing about the variant or model in use.
        return spec.generation, previous.variant, previous.model
    return spec.generation, spec.spec.variant_name, spec.spec.target_model


def readiness(
    old_ready: Condition | None, spec: SpecVerdict | None, resolved: Condition | None
) -> tuple[ConditionStatus, str, str]:
    """Ready's status, reason and message.

    A spec verdict (InvalidSpec, or not reconciled yet) comes first; only
    reconciling the spec (``spec`` not None) may set or lift one.
    """
    if spec is None and old_ready is None:
        return "Unknown", "Reconciling", "the spec has not been reconciled yet"
    if spec is None and old_ready is not None and old_ready.reason in _SPEC_VERDICTS:
        return old_ready.status, old_ready.reason, old_ready.message
    if spec is not None and spec.spec is None:
        return "False", "InvalidSpec", spec.invalid_reason or "the spec is invalid"
    if resolved is None or resolved.status != "True":
        why = resolved.message if resolved is not None else "not looked up yet"
        return "False", "CredentialNotResolved", f"API key not available: {why}"
    return "True", "Reconciled", "sidecar config rendered and API key resolved"


def next_status(
    previous: OpenAiRuntimeStatus, observation: Observation, *, now: datetime
) -> StatusChange:
    """The status after ``observation``, given the ``previous`` one."""
    generation, variant, model = spec_fields(previous, observation.spec)
    conditions = _next_conditions(previous, observation, generation, now)
    credential, rotated = next_credential(previous.credential, observation.credential, now)
    spend, backends = previous.spend, previous.backends
    verdict = observation.spec
    if verdict is not None and verdict.spec is not None and verdict.spec.budget is None:
        # No budget (any more): no spend to keep, no warning to show.
        spend = None
        conditions = [c for c in conditions if c.type != CONDITION_BUDGET_WARNING]
    if verdict is not None and verdict.spec is not None and not verdict.spec.fallbacks:
        backends = None
    status = OpenAiRuntimeStatus(
        observed_generation=generation,
        variant=variant,
        model=model,
        conditions=conditions,
        credential=credential,
        convergence=_next_convergence(previous.convergence, rotated),
        spend=spend,
        backends=backends,
    )
    return StatusChange(
        status=status,
        rotated=rotated,
        changed_conditions=_changed_conditions(previous, conditions),
    )


def _next_conditions(
    previous: OpenAiRuntimeStatus,
    observation: Observation,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    conditions: dict[str, Condition] = {c.type: c for c in previous.conditions}
    resolution = observation.credential
    if resolution is not None:
        conditions[CONDITION_CREDENTIAL_RESOLVED] = next_condition(
            previous,
            CONDITION_CREDENTIAL_RESOLVED,
            ("True" if resolution.resolved else "False", resolution.reason, resolution.message),
            generation,
            now,
        )
    ready = readiness(
        previous.condition(CONDITION_READY),
        observation.spec,
        conditions.get(CONDITION_CREDENTIAL_RESOLVED),
    )
    conditions[CONDITION_READY] = next_condition(previous, CONDITION_READY, ready, generation, now)
    return _ordered_conditions(conditions)


def _ordered_conditions(conditions: Mapping[str, Condition]) -> list[Condition]:
    order = [CONDITION_READY, CONDITION_CREDENTIAL_RESOLVED]
    ordered = [conditions[t] for t in order if t in conditions]
    ordered += [c for t, c in conditions.items() if t not in order]
    return ordered


def _next_convergence(
    convergence: ConvergenceStatus | None, rotated: bool
) -> ConvergenceStatus | None:
    if rotated and convergence is not None:
        # No sidecar has confirmed the new key yet (:mod:`.convergence` counts them).
        return convergence.model_copy(update={"current": 0})
    return convergence


def _changed_conditions(
    previous: OpenAiRuntimeStatus, conditions: list[Condition]
) -> tuple[str, ...]:
    return tuple(
        c.type
        for c in conditions
        if (old := previous.condition(c.type)) is None
        or (old.status, old.reason, old.message) != (c.status, c.reason, c.message)
    )


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``; empty when equal.

    A key of ``old`` missing from ``new`` gets ``null``; objects on both sides
    are diffed recursively; anything else (lists included) is replaced whole,
    as merge patches do. ``new`` must hold no ``null`` (it would mean "delete").
    """
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if key in old and isinstance(before, Mapping) and isinstance(value, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch


def status_patch(stored: Any, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The body of the PATCH to ``/status`` turning ``stored`` (raw) into ``new``;
    None when there is nothing to send."""
    if stored is None:
        stored = {}
    if not isinstance(stored, Mapping):
        return {"status": dict(new)}  # not an object: merge patches replace it whole
    diff = merge_patch(stored, new)
    return {"status": diff} if diff else None


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """What :func:`write_status` read, computed and sent."""

    runtime: dict[str, Any]
    """The runtime as read under the lock (before the status patch)."""
    previous: OpenAiRuntimeStatus
    change: StatusChange
    patch: dict[str, Any] | None
    """The body sent to ``/status``; None when nothing changed and nothing was sent."""


Observe = Callable[[Mapping[str, Any]], Awaitable[Observation | None]]
"""Looks at the freshly read runtime (under its lock); None: leave its status alone."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def write_status(
    ctx: OperatorContext, namespace: str, name: str, observe: Observe
) -> StatusWrite | None:
    """Observe runtime ``namespace/name`` and bring its stored status in line.

    Under the runtime's lock, so that reconciliation, the Secret watch and the
    convergence reports never compute a status from each other's half-written
    one: GET the runtime, ``observe`` it, compute the next status and PATCH
    the difference (no request at all when there is none). None when the
    runtime is gone or ``observe`` declined.
    """
    path = resource_path(API_VERSION, PLURAL, namespace, name)
    async with ctx.lock(namespace, name):
        runtime = await ctx.api.get(path)
        if runtime is None:
            return None
        observation = await observe(runtime)
        if observation is None:
            return None
        stored = runtime.get("status")
        previous = load_status(stored)
        change = next_status(previous, observation, now=_now())
        patch = status_patch(stored, dump_status(change.status))
        if patch is not None:
            await ctx.api.merge_patch(f"{path}/status", patch)
    return StatusWrite(runtime=runtime, previous=previous, change=change, patch=patch)
