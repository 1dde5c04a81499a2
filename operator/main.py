"""``openai-runtime operator``: run the kopf operator (the entry point of this package).

Parses the command line, sets up JSON logs (the sidecar's formatter), builds
the handler registry (:mod:`.registry`) and runs kopf until SIGTERM/SIGINT:
peering on unless ``--standalone`` (so only one replica acts), bounded worker
concurrency, an optional liveness endpoint for the Deployment's probe, and
Prometheus metrics on ``--metrics-port`` (:mod:`.telemetry`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf
from opentelemetry import trace

from openai_runtime_sidecar.logs import configure_logging

from .context import OperatorContext
from .convergence import ConvergenceSettings
from .kubeapi import service_account_token_source
from .registry import build_registry, build_settings, default_login
from .telemetry import export_traces_from_env

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openai-runtime operator",
        description=(
            "Reconcile OpenAiRuntime resources into sidecar ConfigMaps and follow "
            "the Secrets holding their API keys."
        ),
    )
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
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
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
        "--metrics-port",
        type=int,
        default=9465,
        metavar="PORT",
        help="serve Prometheus metrics on 0.0.0.0:PORT/metrics, 0 for none (default %(default)s)",
    )
    parser.add_argument(
        "--sidecar-admin-port",
        type=int,
        default=9464,
        metavar="PORT",
        help="where sidecars answer GET /status, for convergence (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.resync_interval <= 0:
        parser.error("--resync-interval must be positive")
    for flag, port in (
        ("--metrics-port", args.metrics_port),
        ("--sidecar-admin-port", args.sidecar_admin_port),
    ):
        if not 0 <= port <= 65535 or (port == 0 and flag == "--sidecar-admin-port"):
            parser.error(f"{flag} must be a TCP port")
    try:
        configure_logging(args.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    namespaces: list[str] = list(args.namespace)
    clusterwide = not namespaces
    ctx = OperatorContext(
        resync_interval=args.resync_interval,
        token_source=service_account_token_source(),
        convergence=ConvergenceSettings(port=args.sidecar_admin_port),
        metrics_address=("0.0.0.0", args.metrics_port) if args.metrics_port else None,
    )
    log = logging.getLogger(__name__)
    log.info(
        "Starting the openai-runtime operator",
        extra={"fields": {"namespaces": namespaces or "*", "standalone": args.standalone}},
    )
    tracing = export_traces_from_env(os.environ)
    if tracing is not None:
        trace.set_tracer_provider(tracing)  # the spans of .telemetry go to the global one
    try:
        kopf.run(
            registry=build_registry(ctx, default_login, namespaces),
            settings=build_settings(workers=args.workers, standalone=args.standalone),
            clusterwide=clusterwide,
            namespaces=namespaces,
            standalone=args.standalone,
            peering_name=args.peering_name,
            liveness_endpoint=args.liveness,
        )
    except kopf.LoginError as exc:
        log.error("Cannot reach the Kubernetes API: %s", exc)
        return 1
    finally:
        if tracing is not None:
            tracing.shutdown()  # flush the last spans
    return 0


if __name__ == "__main__":
    sys.exit(main())
