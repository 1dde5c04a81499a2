"""``openai-runtime operator``: run the kopf operator (the entry point of this package).

Parses the command line, sets up JSON logs (the sidecar's formatter), builds
the handler registry (:mod:`.registry`) and runs kopf until SIGTERM/SIGINT:
peering on unless ``--standalone`` (so only one replica acts), bounded worker
concurrency, an optional liveness endpoint for the Deployment's probe, and
Prometheus metrics on ``--metrics-port`` (:mod:`.telemetry`), the sidecars'
NetworkPolicy unless ``--no-sidecar-network-policy`` (:mod:`.networking`), and with
``--webhook-port`` the sidecar-injecting admission webhook over TLS
(:mod:`.webhooking` prepares its certificate before kopf starts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from socket import AI_PASSIVE
from typing import Any, cast

import aiohttp
import kopf
from opentelemetry import trace

from openai_runtime_sidecar.contract import ADMIN_PORT
from openai_runtime_sidecar.logs import configure_logging

from .context import OperatorContext
from .convergence import ConvergenceSettings
from .injecting import NamespacedWebhookServer
from .kubeapi import KubeApi, KubeApiError, service_account_token_source
from .networking import NetworkPolicySettings
from .peering import PeeringSettings, own_identity, random_priority
from .registry import LoginFn, build_registry, build_settings, default_login
from .telemetry import export_traces_from_env
from .webhooking import (
    WEBHOOK_CONFIGURATION,
    WEBHOOK_SECRET,
    WEBHOOK_SERVICE,
    SelfSignedSettings,
    prepare_webhook,
    server_from_cert_dir,
)

__all__ = ["build_parser", "build_webhook_server", "main", "network_policy_settings"]

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openai-runtime operator",
        description=(
            "Reconcile OpenAiRuntime resources into sidecar ConfigMaps and follow "
            "the Secrets holding their API keys."
        ),
    )
    _add_scope_arguments(parser)
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    _add_peering_arguments(parser)
    _add_operation_arguments(parser)
    _add_sidecar_arguments(parser)
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    webhook = parser.add_argument_group(
        "sidecar injection",
        "The mutating admission webhook that injects the sidecar (POST /inject, HTTPS).",
    )
    _add_webhook_serving_arguments(webhook)
    _add_self_signed_arguments(webhook)
    return parser


def _add_scope_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs as kopf accepts them)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )


def _add_peering_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: run even if other replicas are running (development only)",
    )
    parser.add_argument(
        "--peering-name",
        default="openai-runtime",
        help="the KopfPeering object shared by the replicas (default %(default)s)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="this replica's peering priority: the highest live one acts, the others wait "
        "(default: random, so replicas never tie; replicas of equal priority all pause)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a replica that stops answering holds the others paused this long: "
        "failover after a crash takes up to this (default %(default)s)",
    )


def _add_operation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="at most this many objects handled at once (default %(default)s)",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="re-reconcile every runtime this often, as a safety net (default %(default)s)",
    )
    parser.add_argument(
        "--budget-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="read the spend of runtimes with a budget this often; spend can overshoot a "
        "limit by what is spent in this time (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9465,
        metavar="PORT",
        help="serve Prometheus metrics on 0.0.0.0:PORT/metrics, 0 for none (default %(default)s)",
    )


def _add_sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sidecar-admin-port",
        type=int,
        default=ADMIN_PORT,
        metavar="PORT",
        help="where sidecars answer GET /status, for convergence (default %(default)s)",
    )
    parser.add_argument(
        "--sidecar-network-policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give each runtime a NetworkPolicy admitting the sidecars' admin port only from "
        "the operator's namespace and --monitoring-namespace, every other port from anywhere "
        "(default: on; turning it off leaves existing policies in place)",
    )
    parser.add_argument(
        "--monitoring-namespace",
        action="append",
        default=None,
        metavar="NS",
        help="a namespace whose pods (Prometheus) may scrape the sidecars' admin port "
        "(repeatable; default: monitoring)",
    )


def _add_webhook_serving_arguments(webhook: argparse._ArgumentGroup) -> None:
    webhook.add_argument(
        "--webhook-port",
        type=int,
        default=0,
        metavar="PORT",
        help="serve the webhook on 0.0.0.0:PORT; 0 (the default) serves none",
    )
    webhook.add_argument(
        "--webhook-cert-dir",
        metavar="DIR",
        default=None,
        help="serve DIR/tls.crt and DIR/tls.key (e.g. from cert-manager), re-read on change; "
        "without it the operator keeps a self-signed certificate in --webhook-secret",
    )


def _add_self_signed_arguments(webhook: argparse._ArgumentGroup) -> None:
    webhook.add_argument(
        "--webhook-namespace",
        metavar="NS",
        default=None,
        help="the operator's namespace, where the Service and Secret are (default: $POD_NAMESPACE)",
    )
    webhook.add_argument(
        "--webhook-service",
        default=WEBHOOK_SERVICE,
        metavar="NAME",
        help="the webhook Service; the self-signed certificate names it (default %(default)s)",
    )
    webhook.add_argument(
        "--webhook-secret",
        default=WEBHOOK_SECRET,
        metavar="NAME",
        help="the Secret holding the self-signed certificate (default %(default)s)",
    )
    webhook.add_argument(
        "--webhook-ca-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="re-assert the self-signed CA bundle in the configuration this often, healing a "
        "reverted or late-created configuration (default %(default)s)",
    )
    webhook.add_argument(
        "--webhook-configuration",
        default=WEBHOOK_CONFIGURATION,
        metavar="NAME",
        help="the MutatingWebhookConfiguration whose caBundle is set to the self-signed "
        "certificate (default %(default)s)",
    )


async def build_webhook_server(
    args: argparse.Namespace,
    login: LoginFn = default_login,
    settings: kopf.OperatorSettings | None = None,
) -> NamespacedWebhookServer:
    """The webhook server ``args`` ask for: on files, or on the shared self-signed certificate."""
    if args.webhook_cert_dir:
        return server_from_cert_dir(args.webhook_cert_dir, port=args.webhook_port)
    # The same keywords kopf gives login handlers (its own login functions need them).
    info = login(logger=logging.getLogger(__name__), settings=settings or kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError("no credentials for the Kubernetes API (in-cluster or kubeconfig)")
    api = KubeApi(info, token_source=service_account_token_source())
    try:
        where = SelfSignedSettings(
            namespace=args.webhook_namespace,
            service=args.webhook_service,
            secret=args.webhook_secret,
            configuration=args.webhook_configuration,
        )
        return await prepare_webhook(api, where, port=args.webhook_port)
    finally:
        await api.close()


def _listen_problem(what: str, host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None (the socket is released at once).

    kopf binds the liveness and webhook listeners only after it logged in and
    found its resources; failing here first names the flag and exits before
    any of that, so Kubernetes restarts the pod and shows why.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host or '*'}:{port} for {what}: {exc.strerror or exc}"
    return None


def _listeners(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    found: list[tuple[str, str, int]] = []
    if args.liveness:
        url = urllib.parse.urlsplit(args.liveness)
        found.append(("the liveness probe (--liveness)", url.hostname or "", url.port or 80))
    if args.webhook_port:
        found.append(("the admission webhook (--webhook-port)", "0.0.0.0", args.webhook_port))
    return found


async def _operate(
    args: argparse.Namespace,
    ctx: OperatorContext,
    settings: kopf.OperatorSettings,
    peering: PeeringSettings,
) -> int:
    """Bind the listeners, prepare the webhook, run kopf; the process's exit status."""
    log = logging.getLogger(__name__)
    namespaces: list[str] = list(args.namespace)
    try:
        await ctx.start_metrics()
    except OSError as exc:
        log.error(
            "Cannot listen on 0.0.0.0:%d for metrics and readiness (--metrics-port): %s",
            args.metrics_port,
            exc.strerror or exc,
        )
        return 1
    try:
        for what, host, port in _listeners(args):
            problem = _listen_problem(what, host, port)
            if problem is not None:
                log.error("Cannot start: %s", problem)
                return 1
        webhook: NamespacedWebhookServer | None = None
        if args.webhook_port:
            try:
                webhook = await build_webhook_server(args, default_login, settings)
            except (
                OSError,
                RuntimeError,
                KubeApiError,
                aiohttp.ClientError,
                kopf.LoginError,
            ) as exc:
                # OSError covers unreadable certificate files and a refused connection.
                log.error("Cannot prepare the admission webhook: %s", exc)
                return 1
            settings.admission.server = webhook
            ctx.webhook_listening = webhook.listening
        registry = build_registry(
            ctx,
            default_login,
            namespaces,
            admission=webhook is not None,
            peering=peering,
            webhook=webhook,
            webhook_configuration=args.webhook_configuration,
            ca_interval=args.webhook_ca_interval,
        )
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.standalone,
            # Only in peered mode: a peering name makes peering mandatory in kopf.
            peering_name=None if args.standalone else args.peering_name,
            priority=peering.priority,
            identity=cast(Any, peering.identity),  # kopf's Identity is a NewType of str
            liveness_endpoint=args.liveness,
        )
    except kopf.LoginError as exc:
        log.error("Cannot reach the Kubernetes API: %s", exc)
        return 1
    except OSError as exc:
        # A listener kopf owns (liveness, webhook) failed after the checks above.
        log.error("Cannot start: %s", exc)
        return 1
    finally:
        await ctx.close()
    return 0


def network_policy_settings(
    args: argparse.Namespace, log: logging.Logger
) -> NetworkPolicySettings | None:
    """The sidecars' NetworkPolicy that ``args`` ask for; None for none.

    The policy must admit the operator's own namespace, or its convergence
    checks could not reach the sidecars: without one known (no POD_NAMESPACE
    nor --webhook-namespace, e.g. run from a laptop), no policy is made.
    """
    if not args.sidecar_network_policy:
        return None
    namespace = args.webhook_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        log.warning(
            "No sidecar NetworkPolicy: the operator's namespace is unknown "
            "(set POD_NAMESPACE or --webhook-namespace, or pass --no-sidecar-network-policy)"
        )
        return None
    return NetworkPolicySettings(
        operator_namespace=namespace,
        # append with a list default would add to the default instead of replacing it.
        monitoring_namespaces=tuple(args.monitoring_namespace or ["monitoring"]),
        port=args.sidecar_admin_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.resync_interval <= 0:
        parser.error("--resync-interval must be positive")
    if args.budget_interval <= 0:
        parser.error("--budget-interval must be positive")
    if args.peering_lifetime < 1:
        parser.error("--peering-lifetime must be at least 1 second")
    if args.webhook_ca_interval <= 0:
        parser.error("--webhook-ca-interval must be positive")
    for flag, port in (
        ("--metrics-port", args.metrics_port),
        ("--sidecar-admin-port", args.sidecar_admin_port),
    ):
        if not 0 <= port <= 65535 or (port == 0 and flag == "--sidecar-admin-port"):
            parser.error(f"{flag} must be a TCP port")
    for ns in args.monitoring_namespace or ():
        # A bad name would only surface as every runtime's policy being refused.
        if not DNS_LABEL.fullmatch(ns):
            parser.error(f"--monitoring-namespace {ns!r} is not a namespace name")
    if not 0 <= args.webhook_port <= 65535:
        parser.error("--webhook-port must be a TCP port")
    if args.webhook_port and not args.webhook_cert_dir:
        args.webhook_namespace = args.webhook_namespace or os.environ.get("POD_NAMESPACE")
        if not args.webhook_namespace:
            parser.error(
                "the self-signed webhook certificate needs --webhook-namespace "
                "(or POD_NAMESPACE): where its Secret and the Service are"
            )
    try:
        configure_logging(args.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    namespaces: list[str] = list(args.namespace)
    peering = PeeringSettings(
        name=args.peering_name,
        identity=own_identity(),
        priority=random_priority() if args.priority is None else args.priority,
        standalone=args.standalone,
        namespaces=tuple(namespaces),
    )
    log = logging.getLogger(__name__)
    ctx = OperatorContext(
        resync_interval=args.resync_interval,
        budget_interval=args.budget_interval,
        workers=args.workers,
        token_source=service_account_token_source(),
        convergence=ConvergenceSettings(port=args.sidecar_admin_port),
        network_policy=network_policy_settings(args, log),
        metrics_address=("0.0.0.0", args.metrics_port) if args.metrics_port else None,
    )
    log.info(
        "Starting the openai-runtime operator",
        extra={
            "fields": {
                "namespaces": namespaces or "*",
                "standalone": args.standalone,
                "identity": peering.identity,
                "priority": peering.priority,
            }
        },
    )
    tracing = export_traces_from_env(os.environ)
    if tracing is not None:
        trace.set_tracer_provider(tracing)  # the spans of .telemetry go to the global one
    settings = build_settings(workers=args.workers, standalone=args.standalone)
    settings.peering.name = args.peering_name
    settings.peering.lifetime = args.peering_lifetime
    try:
        return asyncio.run(_operate(args, ctx, settings, peering))
    finally:
        if tracing is not None:
            tracing.shutdown()  # flush the last spans


if __name__ == "__main__":
    sys.exit(main())
