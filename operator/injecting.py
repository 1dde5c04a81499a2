"""The mutating admission webhook: inject the sidecar into opted-in pods.

A pod opts in with the label ``infer.atomr.io/runtime: <runtime>``; the
runtime must exist in the pod's namespace. :func:`inject` is the pure part:
given the pod and the runtime it returns the pod with the sidecar container
(a native sidecar, i.e. an init container with ``restartPolicy: Always``,
unless ``spec.sidecar.native`` is false), its config and key volumes (the key
Secret mounted whole, never through ``subPath``, so rotations reach it), the
env that points the app's OpenAI SDK at the sidecar (only where unset) and the
injection annotations. :func:`mutate_pod` is the kopf ``@kopf.on.mutate``
handler: it fetches the runtime and applies :func:`inject` to kopf's patch,
which kopf turns into the JSONPatch of the admission response.

Pods that cannot be served are denied rather than admitted without the sidecar:
a missing or invalid runtime, and ``hostNetwork`` pods (the sidecar's loopback
API would be the node's, reachable by every pod on it).

The ports, probe paths and mount points must be the ones the sidecar uses,
so they come from :mod:`openai_runtime_sidecar.contract`; ``ADMIN_PORT``,
``API_PORT``, ``BASE_URL`` and ``CONFIG_DIR`` are re-exported for callers.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Collection, Mapping, MutableMapping
from typing import Any, cast

import kopf

from openai_runtime_sidecar.contract import (
    ADMIN_PORT,
    API_PORT,
    CONFIG_DIR,
    CONFIG_FILE,
    FALLBACK_KEY_DIR,
    HEALTHZ_PATH,
    KEY_DIR,
    READYZ_PATH,
)
from openai_runtime_sidecar.contract import API_BASE_URL as BASE_URL
from openai_runtime_sidecar.runner.modeling import ValidationError

from .context import OperatorContext
from .kubeapi import resource_path
from .models import (
    ANNOTATION_CREDENTIAL_VERSION,
    ANNOTATION_INJECTED,
    API_VERSION,
    CONTAINER_NAME,
    LABEL_RUNTIME,
    MAX_BACKENDS,
    PLURAL,
    OpenAiRuntimeSpec,
)
from .reconciling import configmap_name

__all__ = [
    "ADMIN_PORT",
    "API_PORT",
    "BASE_URL",
    "CONFIG_DIR",
    "CONFIG_VOLUME",
    "INJECTED_ENV",
    "KEY_VOLUME",
    "PLACEHOLDER_API_KEY",
    "InjectionRefused",
    "NamespacedWebhookServer",
    "env_from_names",
    "inject",
    "is_injected",
    "mutate_pod",
]

INJECTED_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY")
PLACEHOLDER_API_KEY = "injected-by-openai-runtime"
"""What apps see as OPENAI_API_KEY: the SDK insists on one; the sidecar holds the real key."""
CONFIG_VOLUME = "openai-runtime-config"
KEY_VOLUME = "openai-runtime-key"
_MAX_FALLBACKS = MAX_BACKENDS - 1
DENIED = 403


class InjectionRefused(ValueError):
    """The pod must not be admitted (the message says why)."""


def is_injected(pod: Mapping[str, Any]) -> bool:
    """The pod already has the sidecar or the injection annotation."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if ANNOTATION_INJECTED in annotations:
        return True
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    return any(c.get("name") == CONTAINER_NAME for c in containers if isinstance(c, Mapping))


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ADMIN_PORT},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }


def _security_context() -> dict[str, Any]:
    # No runAsUser: the image's numeric USER satisfies runAsNonRoot, and
    # platforms that assign a UID per namespace (OpenShift's restricted-v2)
    # refuse a pod that asks for one outside their range.
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _sidecar_container(spec: OpenAiRuntimeSpec) -> dict[str, Any]:
    sidecar = spec.sidecar
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": sidecar.image,
        "imagePullPolicy": sidecar.image_pull_policy,
        "args": ["sidecar", "--config", CONFIG_FILE],
        "ports": [{"name": "oair-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "resources": sidecar.resources.model_dump(by_alias=True, mode="json"),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": True},
            *(
                {
                    "name": fallback_volume(index),
                    "mountPath": f"{FALLBACK_KEY_DIR}/{fallback.name}",
                    "readOnly": True,
                }
                for index, fallback in enumerate(spec.fallbacks)
            ),
        ],
        # Native sidecars gate the app containers' start on the startup probe,
        # so the app's first call finds the sidecar listening. Liveness, not
        # readiness: with the key missing the app still starts and gets a clear
        # 503 credential_unavailable (the pod stays unready) instead of waiting
        # on a sidecar that kubelet keeps restarting.
        "startupProbe": _probe(HEALTHZ_PATH, period=1, failures=30),
        "readinessProbe": _probe(READYZ_PATH, period=5, failures=3),
        "livenessProbe": _probe(HEALTHZ_PATH, period=10, failures=3),
        "securityContext": _security_context(),
    }
    if sidecar.native:
        container["restartPolicy"] = "Always"
    return container


def _volumes(runtime_name: str, spec: OpenAiRuntimeSpec) -> list[dict[str, Any]]:
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": configmap_name(runtime_name)}},
        # The whole Secret, so kubelet's atomic ``..data`` swap reaches the file.
        {"name": KEY_VOLUME, "secret": {"secretName": spec.primary.api_key_secret_ref.name}},
        # Optional: a standby's missing Secret must not keep the app from
        # starting; its sidecar skips a backend without a key and reports it.
        *(
            {
                "name": fallback_volume(index),
                "secret": {"secretName": f.api_key_secret_ref.name, "optional": True},
            }
            for index, f in enumerate(spec.fallbacks)
        ),
    ]


def fallback_volume(index: int) -> str:
    """The volume of the ``index``-th fallback's Secret (by place: names may be long)."""
    return f"{KEY_VOLUME}-fallback-{index}"


def _add_env(container: dict[str, Any], from_sources: Collection[str]) -> None:
    env = container.setdefault("env", [])
    # ``env`` wins over ``envFrom`` in Kubernetes: adding a name the container
    # already gets from a ConfigMap or Secret would silently override it.
    present = {e.get("name") for e in env if isinstance(e, Mapping)} | set(from_sources)
    for name, value in zip(INJECTED_ENV, (BASE_URL, PLACEHOLDER_API_KEY), strict=True):
        if name not in present:
            env.append({"name": name, "value": value})
    if not env:
        del container["env"]


def _check_no_clash(pod_spec: Mapping[str, Any], runtime_name: str) -> None:
    """Refuse pods whose own volumes or ports would collide with the sidecar's."""
    taken = {str(v.get("name")) for v in pod_spec.get("volumes") or [] if isinstance(v, Mapping)}
    ours = {CONFIG_VOLUME, KEY_VOLUME, *(fallback_volume(i) for i in range(_MAX_FALLBACKS))}
    clashing = sorted(taken & ours)
    if clashing:
        raise InjectionRefused(
            f"the pod already has a volume named {', '.join(clashing)}, which the sidecar of "
            f"OpenAiRuntime {runtime_name} needs; rename it"
        )
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    for container in containers:
        if not isinstance(container, Mapping):
            continue
        for port in container.get("ports") or []:
            if isinstance(port, Mapping) and port.get("containerPort") in (API_PORT, ADMIN_PORT):
                raise InjectionRefused(
                    f"container {container.get('name')} declares port "
                    f"{port.get('containerPort')}, which the sidecar of OpenAiRuntime "
                    f"{runtime_name} listens on (pods share one network namespace)"
                )


def inject(
    pod: Mapping[str, Any],
    runtime: Mapping[str, Any],
    *,
    env_from: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """The pod with the sidecar of ``runtime`` injected (a copy; the input is untouched).

    ``env_from`` maps a container's name to the variable names its ``envFrom``
    sources provide (:func:`env_from_names` looks them up); the injected
    variables are not added where those already set them.

    An already injected pod comes back unchanged. Raises :class:`InjectionRefused`
    for a ``hostNetwork`` pod, a runtime whose spec is invalid, and a pod whose
    volume names or declared ports collide with the sidecar's.
    """
    result: dict[str, Any] = copy.deepcopy(dict(pod))
    if is_injected(result):
        return result
    runtime_meta = runtime.get("metadata") or {}
    runtime_name = str(runtime_meta.get("name") or "")
    pod_spec = result.setdefault("spec", {})
    if pod_spec.get("hostNetwork"):
        raise InjectionRefused(
            f"pods with hostNetwork cannot use OpenAiRuntime {runtime_name}: the sidecar's "
            "loopback API would be the node's, open to every pod on it"
        )
    try:
        spec = OpenAiRuntimeSpec.model_validate(runtime.get("spec") or {})
    except ValidationError as error:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise InjectionRefused(f"OpenAiRuntime {runtime_name} is invalid: {problems}") from None

    _check_no_clash(pod_spec, runtime_name)

    provided = env_from or {}
    for container in pod_spec.get("containers") or []:
        if isinstance(container, dict):
            _add_env(container, provided.get(str(container.get("name")), ()))
    sidecar = _sidecar_container(spec)
    if spec.sidecar.native:
        # First, so the pod's own init containers can call it too.
        pod_spec["initContainers"] = [sidecar, *(pod_spec.get("initContainers") or [])]
    else:
        pod_spec.setdefault("containers", []).append(sidecar)
    pod_spec["volumes"] = [*(pod_spec.get("volumes") or []), *_volumes(runtime_name, spec)]

    annotations = result.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[ANNOTATION_INJECTED] = runtime_name
    credential = (runtime.get("status") or {}).get("credential") or {}
    if credential.get("fingerprint"):
        annotations[ANNOTATION_CREDENTIAL_VERSION] = str(credential["fingerprint"])
    return result


def _replace(target: MutableMapping[str, Any], source: Mapping[str, Any]) -> None:
    target.clear()
    target.update(copy.deepcopy(dict(source)))


async def env_from_names(
    ctx: OperatorContext, namespace: str, container: Mapping[str, Any]
) -> set[str]:
    """Which of the injected variables ``container`` gets from its ``envFrom`` sources.

    Only the names are kept, never values. A source that does not exist (yet)
    provides nothing: kubelet would not start an app whose required source is
    missing, and an optional one really provides nothing.
    """
    found: set[str] = set()
    for source in container.get("envFrom") or []:
        if not isinstance(source, Mapping):
            continue
        prefix = str(source.get("prefix") or "")
        for field, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = source.get(field)
            if not isinstance(ref, Mapping) or not ref.get("name"):
                continue
            wanted = {n[len(prefix) :] for n in INJECTED_ENV if n.startswith(prefix)}
            if not wanted:
                continue
            obj = await ctx.api.get(resource_path("v1", plural, namespace, str(ref["name"])))
            keys = set(((obj or {}).get("data") or {}).keys())
            found |= {prefix + key for key in wanted & keys}
    return found


async def mutate_pod(
    ctx: OperatorContext,
    *,
    body: Mapping[str, Any],
    patch: kopf.Patch,
    namespace: str | None,
) -> None:
    """The admission handler's work: fetch the runtime, refuse or inject through ``patch``."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    runtime_name = str(labels.get(LABEL_RUNTIME) or "")
    if is_injected(body):
        return
    if not namespace:
        raise kopf.AdmissionError("the pod's namespace is unknown", code=400)
    if not runtime_name:
        raise kopf.AdmissionError(f"label {LABEL_RUNTIME} names no OpenAiRuntime", code=400)
    runtime = await ctx.api.get(resource_path(API_VERSION, PLURAL, namespace, runtime_name))
    if runtime is None:
        raise kopf.AdmissionError(
            f"OpenAiRuntime {runtime_name} not found in namespace {namespace}", code=DENIED
        )
    spec = body.get("spec") or {}
    env_from = {
        str(c.get("name")): await env_from_names(ctx, namespace, c)
        for c in spec.get("containers") or []
        if isinstance(c, Mapping) and c.get("envFrom")
    }
    try:
        injected = inject(body, runtime, env_from=env_from)
    except InjectionRefused as error:
        raise kopf.AdmissionError(str(error), code=DENIED) from None

    def apply(raw: kopf.RawBody) -> None:
        # kopf hands a copy of the reviewed object and diffs it into a JSONPatch.
        _replace(cast(MutableMapping[str, Any], raw), injected)

    patch.fns.append(apply)


class NamespacedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, filling the object's namespace from the admission request.

    Pods created by controllers (ReplicaSets, Jobs) reach admission without
    ``metadata.namespace``; the request's ``namespace`` field has it. The
    filled value equals what the API server stores, so no patch op results.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listening = asyncio.Event()
        """Set once the server accepts connections (the operator's readiness waits for it)."""
        self.ca_bundle: bytes | None = None
        """The self-signed bootstrap's CA bundle, which the operator keeps published."""
        self.ca_served: bytes | None = None
        """The certificate this server serves (the bundle must keep trusting it)."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def with_namespace(request: Any, **kwargs: Any) -> Any:
            payload = request.get("request") if isinstance(request, dict) else None
            if isinstance(payload, dict):
                obj = payload.get("object")
                ns = payload.get("namespace")
                if ns and isinstance(obj, dict):
                    meta = obj.setdefault("metadata", {})
                    if isinstance(meta, dict) and not meta.get("namespace"):
                        meta["namespace"] = ns
            return await fn(request, **kwargs)

        try:
            async for config in super().__call__(with_namespace):
                # kopf yields the client config only once its socket is bound.
                self.listening.set()
                yield config
        finally:
            self.listening.clear()
