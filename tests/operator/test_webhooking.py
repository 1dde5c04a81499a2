"""The webhook's TLS: the self-signed bootstrap against kmock, and HTTPS as the API server does it.

The API server calls ``https://<service>.<namespace>.svc:443/inject`` and
trusts only the configuration's ``caBundle``; the end-to-end test here does
the same on loopback: it reads the bundle the operator published into the
MutatingWebhookConfiguration and verifies the served certificate against it
for the Service's DNS name.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from pathlib import Path
from typing import Any

import kopf
import pytest

from openai_runtime_operator.kubeapi import KubeApi
from openai_runtime_operator.main import build_parser, build_webhook_server, main
from openai_runtime_operator.webhooking import (
    SelfSignedSettings,
    ServingCertificate,
    ensure_certificate,
    generate_certificate,
    prepare_webhook,
    publish_ca_bundle,
    service_hostnames,
)

from ..support import free_port
from .test_injecting import Webhook, controller_pod, serving, with_status
from .test_operator import NS, RUNTIMES, runtime

OPERATOR_NS = "openai-runtime-system"
SECRETS = "v1/secrets"
MWCS = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SETTINGS = SelfSignedSettings(namespace=OPERATOR_NS)
HOSTNAMES = service_hostnames(SETTINGS.service, OPERATOR_NS)


def mwc(*webhooks: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "openai-runtime"},
        "webhooks": [
            {
                "name": name,
                "clientConfig": {
                    "service": {"name": SETTINGS.service, "namespace": OPERATOR_NS},
                },
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            }
            for name in webhooks
        ],
    }


@pytest.fixture
def cluster(declare: Any) -> Any:
    declare.resources[MWCS] = {
        "kind": "MutatingWebhookConfiguration",
        "namespaced": False,
        "verbs": ["get", "list", "watch", "patch"],
    }
    declare.objects[MWCS, None, "openai-runtime"] = mwc("inject.openai-runtime.infer.atomr.io")
    return declare


@pytest.fixture
async def api(cluster: Any) -> Any:
    client = KubeApi(kopf.ConnectionInfo(server=str(cluster.url), insecure=True))
    yield client
    await client.close()


def stored_secret(kmock: Any) -> dict[str, Any]:
    return dict(kmock.objects[SECRETS, OPERATOR_NS, SETTINGS.secret].raw)


def bundles(kmock: Any) -> list[bytes]:
    config = dict(kmock.objects[MWCS, None, "openai-runtime"].raw)
    return [base64.b64decode(w["clientConfig"]["caBundle"]) for w in config["webhooks"]]


def requests(kmock: Any, method: str, part: str) -> list[Any]:
    return [r for r in list(kmock) if r.method == method and part in str(r.url)]


def served_files(server: Any) -> tuple[bytes, int]:
    """The certificate file's content and the key file's group/other permission bits."""
    return Path(server.certfile).read_bytes(), Path(server.pkeyfile).stat().st_mode & 0o077


# --- the certificate -------------------------------------------------------------------


def test_generated_certificate_covers_the_service_names_until_renewal() -> None:
    cert = generate_certificate(HOSTNAMES, now=NOW, validity=datetime.timedelta(days=365))
    week = datetime.timedelta(days=7)
    assert cert.usable_for(HOSTNAMES, now=NOW, renew_before=week)
    assert not cert.usable_for(["other.svc"], now=NOW, renew_before=week)
    soon = NOW + datetime.timedelta(days=360)
    assert not cert.usable_for(HOSTNAMES, now=soon, renew_before=week)
    assert not ServingCertificate(b"garbage", cert.key_pem).usable_for(
        HOSTNAMES, now=NOW, renew_before=week
    )


def test_secret_round_trip_and_unreadable_secrets() -> None:
    cert = generate_certificate(HOSTNAMES, now=NOW, validity=datetime.timedelta(days=1))
    assert ServingCertificate.from_secret({"data": cert.secret_data()}) == cert
    assert ServingCertificate.from_secret({"data": {"tls.crt": "!!"}}) is None
    assert ServingCertificate.from_secret({}) is None


# --- the bootstrap against kmock --------------------------------------------------------


async def test_first_start_creates_the_secret_and_later_starts_reuse_it(
    cluster: Any, api: KubeApi
) -> None:
    cert, previous = await ensure_certificate(api, SETTINGS, now=NOW)
    assert previous is None
    secret = stored_secret(cluster)
    assert secret["type"] == "kubernetes.io/tls"
    assert ServingCertificate.from_secret(secret) == cert
    again, replaced = await ensure_certificate(api, SETTINGS, now=NOW)
    assert (again, replaced) == (cert, None)
    assert len(requests(cluster, "POST", "/secrets")) == 1
    assert not requests(cluster, "PATCH", "/secrets")


async def test_replicas_starting_together_share_one_certificate(cluster: Any) -> None:
    clients = [
        KubeApi(kopf.ConnectionInfo(server=str(cluster.url), insecure=True)) for _ in range(3)
    ]
    try:
        results = await asyncio.gather(*(ensure_certificate(c, SETTINGS, now=NOW) for c in clients))
    finally:
        for client in clients:
            await client.close()
    stored = ServingCertificate.from_secret(stored_secret(cluster))
    assert {cert for cert, _ in results} == {stored}


async def test_expiring_certificate_is_renewed_and_both_are_trusted(
    cluster: Any, api: KubeApi
) -> None:
    old = generate_certificate(HOSTNAMES, now=NOW, validity=datetime.timedelta(days=10))
    cluster.objects[SECRETS, OPERATOR_NS, SETTINGS.secret] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SETTINGS.secret, "namespace": OPERATOR_NS},
        "type": "kubernetes.io/tls",
        "data": old.secret_data(),
    }
    await publish_ca_bundle(api, "openai-runtime", old.cert_pem)
    assert bundles(cluster) == [old.cert_pem]

    port = free_port()
    await prepare_webhook(api, SETTINGS, port=port, now=NOW)
    new = ServingCertificate.from_secret(stored_secret(cluster))
    assert new is not None and new != old
    assert new.usable_for(HOSTNAMES, now=NOW, renew_before=SETTINGS.renew_before)
    # Replicas still serving the old certificate stay trusted until they restart.
    assert bundles(cluster) == [new.cert_pem + old.cert_pem]
    # A replica starting later leaves a bundle that already trusts the new one alone.
    patches = len(requests(cluster, "PATCH", "mutatingwebhookconfigurations"))
    await prepare_webhook(api, SETTINGS, port=port, now=NOW)
    assert len(requests(cluster, "PATCH", "mutatingwebhookconfigurations")) == patches
    assert bundles(cluster) == [new.cert_pem + old.cert_pem]


async def test_certificate_for_other_names_is_replaced(cluster: Any, api: KubeApi) -> None:
    moved = SelfSignedSettings(namespace=OPERATOR_NS, service="renamed-webhook")
    first, _ = await ensure_certificate(api, SETTINGS, now=NOW)
    second, replaced = await ensure_certificate(api, moved, now=NOW)
    assert replaced == first and second != first
    assert second.usable_for(
        service_hostnames("renamed-webhook", OPERATOR_NS),
        now=NOW,
        renew_before=datetime.timedelta(),
    )


async def test_missing_configuration_is_reported_not_fatal(cluster: Any, api: KubeApi) -> None:
    cert = generate_certificate(HOSTNAMES, now=NOW, validity=datetime.timedelta(days=1))
    assert await publish_ca_bundle(api, "not-there", cert.cert_pem) is False
    assert await publish_ca_bundle(api, "openai-runtime", cert.cert_pem) is True


async def test_the_key_is_never_outside_the_secret(cluster: Any, api: KubeApi) -> None:
    await prepare_webhook(api, SETTINGS, port=free_port(), now=NOW)
    key = ServingCertificate.from_secret(stored_secret(cluster))
    assert key is not None
    encoded = base64.b64encode(key.key_pem).decode()
    for request in list(cluster):
        if "/secrets" not in str(request.url):
            assert encoded not in request.body.decode("utf-8", "replace")
    config = dict(cluster.objects[MWCS, None, "openai-runtime"].raw)
    assert encoded not in str(config) and key.key_pem.decode() not in str(config)


# --- HTTPS, as the API server calls it ---------------------------------------------------


async def test_api_server_view_of_the_bootstrapped_webhook(cluster: Any, api: KubeApi) -> None:
    port = free_port()
    server = await prepare_webhook(api, SETTINGS, port=port)  # the real clock, as TLS checks it
    server.addr = "127.0.0.1"
    cluster.objects[RUNTIMES, NS, "alpha"] = with_status(runtime("alpha"))
    [bundle] = bundles(cluster)
    trusting = ssl.create_default_context(cadata=bundle.decode())
    async with serving(cluster, server, port):
        webhook = Webhook(
            f"https://127.0.0.1:{port}/inject",
            ssl=trusting,
            server_hostname=f"{SETTINGS.service}.{OPERATOR_NS}.svc",
        )
        answer = await webhook.review(controller_pod())
        assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"
        # A client trusting another CA is refused: the bundle is what makes it work.
        other = generate_certificate(
            HOSTNAMES, now=datetime.datetime.now(datetime.UTC), validity=datetime.timedelta(days=1)
        )
        stranger = Webhook(
            f"https://127.0.0.1:{port}/inject",
            ssl=ssl.create_default_context(cadata=other.cert_pem.decode()),
            server_hostname=f"{SETTINGS.service}.{OPERATOR_NS}.svc",
        )
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.review(controller_pod())


async def test_cert_dir_mode_serves_the_files(cluster: Any, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)  # a real handshake checks the real clock
    cert = generate_certificate(HOSTNAMES, now=now, validity=datetime.timedelta(days=90))
    (tmp_path / "tls.crt").write_bytes(cert.cert_pem)
    (tmp_path / "tls.key").write_bytes(cert.key_pem)
    port = free_port()
    args = build_parser().parse_args(
        ["--webhook-port", str(port), "--webhook-cert-dir", str(tmp_path)]
    )
    server = await build_webhook_server(args)
    server.addr = "127.0.0.1"
    cluster.objects[RUNTIMES, NS, "alpha"] = with_status(runtime("alpha"))
    async with serving(cluster, server, port):
        webhook = Webhook(
            f"https://127.0.0.1:{port}/inject",
            ssl=ssl.create_default_context(cadata=cert.cert_pem.decode()),
            server_hostname=HOSTNAMES[0],
        )
        assert (await webhook.review(controller_pod()))["allowed"] is True
    assert not requests(cluster, "POST", "/secrets")  # files only: no Secret, no patch
    assert not requests(cluster, "PATCH", "mutatingwebhookconfigurations")


async def test_self_signed_mode_from_the_command_line(cluster: Any) -> None:
    args = build_parser().parse_args(["--webhook-port", "9443", "--webhook-namespace", OPERATOR_NS])

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(cluster.url), insecure=True)

    server = await build_webhook_server(args, login)
    assert server.port == 9443 and server.certfile and server.pkeyfile
    stored = ServingCertificate.from_secret(stored_secret(cluster))
    assert stored is not None
    assert served_files(server) == (stored.cert_pem, 0)  # the key is private to the process
    assert bundles(cluster) == [stored.cert_pem]


def test_cert_dir_without_files_is_a_clear_error(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--webhook-port", "1", "--webhook-cert-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match=r"tls\.crt or tls\.key"):
        asyncio.run(build_webhook_server(args))


def test_self_signed_mode_needs_the_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--webhook-port", "9443"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--webhook-port", "70000"])


async def test_self_signed_mode_without_credentials_is_a_login_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf's own login functions (the default) are called as kopf calls them."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = build_parser().parse_args(["--webhook-port", "9443", "--webhook-namespace", OPERATOR_NS])
    with pytest.raises(kopf.LoginError):
        await build_webhook_server(args)
