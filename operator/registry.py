"""Wiring: which kopf handler does what, and the settings the operator runs with.

:func:`build_registry` registers every handler in a fresh
:class:`kopf.OperatorRegistry` (nothing is registered at import time, so tests
run isolated operators): login, the runtime reconciliation on
create/update/resume (:mod:`.reconciling`) and the safety-net resync loop
(:mod:`.resync`, started at start-up with the metrics server of
:mod:`.telemetry`), the
index of runtimes by Secret and the read-only Secret watch (:mod:`.rotation`),
and a deletion notice. :func:`build_settings` makes kopf keep its progress
and diff-base in annotations (the CRD's status schema would prune kopf's own
status fields) and bounds concurrency. :mod:`.main` runs the result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import kopf

from .budgeting import budget_forever
from .context import OperatorContext
from .injecting import NamespacedWebhookServer, mutate_pod
from .models import GROUP, LABEL_RUNTIME, PLURAL, VERSION
from .peering import PeeringSettings, is_acting, report_peering
from .posting import post_event
from .reconciling import reconcile
from .resync import resync_forever
from .rotation import Uses, on_secret_event, runtime_pods, runtimes_by_secret, secret_digest
from .webhooking import WEBHOOK_CONFIGURATION, keep_ca_bundle_published

__all__ = ["LoginFn", "build_registry", "build_settings", "default_login"]

LoginFn = Callable[..., kopf.ConnectionInfo | None]
Logger = logging.Logger | logging.LoggerAdapter[Any]


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig as kubectl reads it.

    The kubeconfig goes through the ``kubernetes`` client (kopf's
    ``login_via_client``), which runs exec credential plugins and auth
    providers (EKS, GKE, AKS, OIDC); kopf's own kubeconfig reader runs neither.
    An expired plugin token makes kopf log in again, which runs the plugin again.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_via_client(**kwargs)


def build_settings(
    *, workers: int = 16, standalone: bool = False, posting_level: int = logging.WARNING
) -> kopf.OperatorSettings:
    """kopf's settings: state in annotations, bounded workers, only warnings as Events.

    (``posting_level`` only concerns kopf's own messages, such as a handler's
    failure; the operator posts its Events itself, :mod:`.posting`.)
    ``workers`` does not cap kopf's per-object workers (``queueing.worker_limit``
    stays unlimited): every runtime must be indexed before any handler runs, so
    with more runtimes than workers at start-up the first ones would wait for
    the index forever holding every slot, and an idle worker keeps its slot for
    ``queueing.idle_timeout`` seconds after its last event. The handlers bound
    themselves instead (:meth:`.OperatorContext.slot`; pass the same number as
    :attr:`.OperatorContext.workers`).
    """
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.queueing.worker_limit = None
    settings.execution.max_workers = max(1, min(workers, 8))
    settings.peering.standalone = standalone
    settings.peering.name = "openai-runtime"
    settings.posting.level = posting_level
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    return settings


_RUNTIMES = (GROUP, VERSION, PLURAL)


def build_registry(
    ctx: OperatorContext,
    login: LoginFn = default_login,
    namespaces: Sequence[str] = (),
    *,
    admission: bool = False,
    peering: PeeringSettings | None = None,
    webhook: NamespacedWebhookServer | None = None,
    webhook_configuration: str = WEBHOOK_CONFIGURATION,
    ca_interval: float = 60.0,
) -> kopf.OperatorRegistry:
    """A registry with all the operator's handlers, sharing ``ctx``.

    ``namespaces`` scopes the safety-net resync (empty: cluster-wide), as the
    same list scopes kopf's watches. ``admission`` adds the pod-injecting
    mutating webhook (handler id ``inject``, :mod:`.injecting`); kopf then
    refuses to run without ``settings.admission.server``. ``peering`` (None:
    standalone) makes the resync run only on the acting replica and reports a
    missing peering CRD or object. ``webhook``, when it serves the self-signed
    certificate, has its CA bundle re-asserted in ``webhook_configuration``
    every ``ca_interval`` seconds.
    """
    registry = kopf.OperatorRegistry()
    _register_login_and_cleanup(registry, ctx, login)
    _register_reconcile(registry, ctx)
    _register_startup(
        registry,
        ctx,
        namespaces,
        peering=peering,
        webhook=webhook,
        webhook_configuration=webhook_configuration,
        ca_interval=ca_interval,
    )
    _register_secret_watch(registry, ctx)
    _register_deletion_notice(registry, ctx)
    if admission:
        _register_injection(registry, ctx)
    return registry


def _register_login_and_cleanup(
    registry: kopf.OperatorRegistry, ctx: OperatorContext, login: LoginFn
) -> None:
    async def login_handler(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        ctx.set_connection(info)
        return info

    kopf.on.login(registry=registry, id="login")(login_handler)

    async def cleanup(**_: Any) -> None:
        await ctx.close()

    kopf.on.cleanup(registry=registry, id="cleanup")(cleanup)


def _register_reconcile(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    async def reconcile_handler(
        *,
        body: kopf.Body,
        spec: kopf.Spec,
        meta: kopf.Meta,
        namespace: str | None,
        name: str,
        logger: Logger,
        **_: Any,
    ) -> None:
        # Returns nothing on purpose: kopf would store a result under status.
        if not namespace:
            return
        async with ctx.slot():
            await reconcile(
                ctx,
                body=body,
                spec=spec,
                meta=meta,
                namespace=namespace,
                name=name,
                logger=logger,
            )

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*_RUNTIMES, registry=registry, id="reconcile")(reconcile_handler)


def _acting_check(
    ctx: OperatorContext, peering: PeeringSettings | None
) -> Callable[[], Awaitable[bool]]:
    async def acting() -> bool:
        if peering is None:
            return True
        try:
            return await is_acting(ctx.api, peering)
        except kopf.TemporaryError:  # not logged in yet
            return False

    return acting


def _register_startup(
    registry: kopf.OperatorRegistry,
    ctx: OperatorContext,
    namespaces: Sequence[str],
    *,
    peering: PeeringSettings | None,
    webhook: NamespacedWebhookServer | None,
    webhook_configuration: str,
    ca_interval: float,
) -> None:
    acting = _acting_check(ctx, peering)

    async def start_resync(**_: Any) -> None:
        ctx.background(resync_forever(ctx, namespaces, ctx.resync_interval, acting=acting))
        ctx.background(budget_forever(ctx, ctx.budget_interval, acting=acting))
        if peering is not None and not peering.standalone:
            ctx.background(report_peering(lambda: ctx.api, peering))
        if webhook is not None:
            ctx.background(
                keep_ca_bundle_published(
                    lambda: ctx.api, webhook_configuration, webhook, interval=ca_interval
                )
            )
        await ctx.start_metrics()

    kopf.on.startup(registry=registry, id="resync")(start_resync)


def _register_secret_watch(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    kopf.index(*_RUNTIMES, registry=registry, id="runtimes_by_secret")(runtimes_by_secret)

    async def secret_handler(
        *,
        type: str | None,
        body: kopf.Body,
        namespace: str | None,
        name: str,
        logger: Logger,
        **kwargs: Any,
    ) -> None:
        # kopf passes each index as a keyword named after it.
        index = cast(kopf.Index[tuple[str, str], Uses], kwargs["runtimes_by_secret"])
        if not namespace or (namespace, name) not in index:
            return  # most Secrets: no runtime of ours, no slot taken
        digest = None if type == "DELETED" else secret_digest(body)
        async with ctx.slot():
            await on_secret_event(
                ctx, namespace=namespace, name=name, index=index, logger=logger, digest=digest
            )

    kopf.on.event("v1", "secrets", registry=registry, id="secrets")(secret_handler)


def _register_deletion_notice(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    async def deleted_handler(
        *,
        type: str,
        body: kopf.Body,
        namespace: str | None,
        name: str,
        logger: Logger,
        **_: Any,
    ) -> None:
        # An event handler, not on.delete: nothing to clean up (the ConfigMap is
        # owned), so a finalizer would only make deletion depend on the operator.
        if type != "DELETED" or not namespace or not name:
            return
        ctx.forget(namespace, name)
        pods = await runtime_pods(ctx, namespace, name)
        if pods:
            message = (
                f"{len(pods)} pod(s) still carry {LABEL_RUNTIME}={name}; their sidecars keep "
                "the last config and key until restarted, new pods are not injected"
            )
            logger.warning(message)
            await post_event(
                ctx,
                body,
                type="Warning",
                reason="RuntimeDeletedWithPods",
                message=message,
                log=logger,
            )

    kopf.on.event(*_RUNTIMES, registry=registry, id="deleted")(deleted_handler)


def _register_injection(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    async def inject_handler(
        *, body: kopf.Body, patch: kopf.Patch, namespace: str | None, **_: Any
    ) -> None:
        await mutate_pod(ctx, body=body, patch=patch, namespace=namespace)

    kopf.on.mutate(
        "v1",
        "pods",
        registry=registry,
        id="inject",
        operations=["CREATE"],
        labels={LABEL_RUNTIME: kopf.PRESENT},
    )(inject_handler)
