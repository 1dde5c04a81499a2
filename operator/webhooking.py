"""Serving the admission webhook of :mod:`.injecting` over TLS.

:mod:`.main` calls :func:`prepare_webhook` before kopf starts; the result goes
into ``settings.admission.server``. The API server only calls webhooks over
HTTPS and checks the certificate against the ``caBundle`` of the
MutatingWebhookConfiguration, so the certificate comes from one of two places:

* **files** (``--webhook-cert-dir``): ``tls.crt`` and ``tls.key``, e.g. a
  Secret that cert-manager issues and renews, whose CA its injector writes into
  the configuration. kopf re-reads the files when they change.
* **self-signed bootstrap** (no cert dir): the first replica to start creates a
  self-signed certificate for the webhook Service's DNS names and stores it in
  a Secret; every replica serves that same certificate (the Service balances
  over all of them), and each writes it as the ``caBundle`` of the one
  configuration it is told about. A certificate close to expiry, or one for
  other names, is replaced at start-up; the bundle then carries the old and the
  new certificate, so replicas still serving the old one keep being trusted
  until they restart.

Neither the key nor the certificate is logged. Besides the Secret, the
private key is only in a private temporary directory of the operator's
process, from which kopf loads it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from .injecting import NamespacedWebhookServer
from .kubeapi import KubeApi, KubeApiError, resource_path

__all__ = [
    "MWC_PATH",
    "WEBHOOK_CONFIGURATION",
    "WEBHOOK_SECRET",
    "WEBHOOK_SERVICE",
    "SelfSignedSettings",
    "ServingCertificate",
    "bundle_with",
    "ensure_certificate",
    "generate_certificate",
    "keep_ca_bundle_published",
    "prepare_webhook",
    "publish_ca_bundle",
    "server_from_cert_dir",
    "server_from_certificate",
    "service_hostnames",
]

log = logging.getLogger(__name__)

MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CERT_KEY = "tls.crt"
PKEY_KEY = "tls.key"

# The names deploy/ and the chart give these objects; the command line can
# override each, and these are its defaults.
WEBHOOK_SERVICE = "openai-runtime-webhook"
WEBHOOK_SECRET = "openai-runtime-webhook-tls"
WEBHOOK_CONFIGURATION = "openai-runtime"


@dataclass(frozen=True)
class SelfSignedSettings:
    """Where the self-signed certificate lives and whom it is for."""

    namespace: str
    """The operator's namespace: the Service and the Secret are there."""
    service: str = WEBHOOK_SERVICE
    """The webhook Service; the certificate is valid for its cluster DNS names."""
    secret: str = WEBHOOK_SECRET
    """The ``kubernetes.io/tls`` Secret that every replica shares."""
    configuration: str = WEBHOOK_CONFIGURATION
    """The MutatingWebhookConfiguration whose ``caBundle`` is written."""
    validity: datetime.timedelta = datetime.timedelta(days=3650)
    """How long a new certificate is valid (default 10 years)."""
    renew_before: datetime.timedelta = datetime.timedelta(days=30)
    """Replace a certificate at start-up when it expires sooner than this."""


def service_hostnames(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a Service (it uses ``<svc>.<ns>.svc``)."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


@dataclass(frozen=True)
class ServingCertificate:
    """A PEM certificate and its PEM private key; the certificate is its own CA."""

    cert_pem: bytes
    key_pem: bytes

    def usable_for(
        self, hostnames: Sequence[str], *, now: datetime.datetime, renew_before: datetime.timedelta
    ) -> bool:
        """True if it parses, covers every hostname and lives past ``now + renew_before``."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (ValueError, x509.ExtensionNotFound):
            return False
        names = set(sans.value.get_values_for_type(x509.DNSName))
        return set(hostnames) <= names and cert.not_valid_after_utc > now + renew_before

    def secret_data(self) -> dict[str, str]:
        return {
            CERT_KEY: base64.b64encode(self.cert_pem).decode("ascii"),
            PKEY_KEY: base64.b64encode(self.key_pem).decode("ascii"),
        }

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> ServingCertificate | None:
        data = secret.get("data") or {}
        try:
            cert = base64.b64decode(data[CERT_KEY], validate=True)
            key = base64.b64decode(data[PKEY_KEY], validate=True)
        except (KeyError, TypeError, ValueError):
            return None
        return cls(cert, key) if cert and key else None


def generate_certificate(
    hostnames: Sequence[str], *, now: datetime.datetime, validity: datetime.timedelta
) -> ServingCertificate:
    """A self-signed ECDSA P-256 certificate for ``hostnames``, usable as its own CA."""
    # Lazily: the sidecar shares this distribution and must not pay for it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little in the past: clocks in a cluster are never quite equal.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServingCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _secret_body(settings: SelfSignedSettings, cert: ServingCertificate) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": settings.secret,
            "namespace": settings.namespace,
            "labels": {
                "app.kubernetes.io/name": "openai-runtime",
                "app.kubernetes.io/component": "webhook-tls",
            },
        },
        "data": cert.secret_data(),
    }


async def ensure_certificate(
    api: KubeApi, settings: SelfSignedSettings, *, now: datetime.datetime
) -> tuple[ServingCertificate, ServingCertificate | None]:
    """The certificate to serve, and the one it replaced (None if none was replaced).

    Several replicas may start at once: creation is first-wins (a 409 means
    another replica made it, and that one is used), and a renewal carries the
    Secret's ``resourceVersion``, so two replicas never renew over each other.
    """
    hostnames = service_hostnames(settings.service, settings.namespace)
    path = resource_path("v1", "secrets", settings.namespace, settings.secret)
    for _ in range(3):
        secret = await api.get(path)
        current = ServingCertificate.from_secret(secret) if secret is not None else None
        if current is not None and current.usable_for(
            hostnames, now=now, renew_before=settings.renew_before
        ):
            return current, None
        fresh = generate_certificate(hostnames, now=now, validity=settings.validity)
        try:
            if secret is None:
                await api.create(
                    resource_path("v1", "secrets", settings.namespace),
                    _secret_body(settings, fresh),
                )
                log.info(
                    "Created the webhook certificate",
                    extra={"fields": {"secret": settings.secret, "hostnames": hostnames}},
                )
            else:
                version = (secret.get("metadata") or {}).get("resourceVersion")
                await api.merge_patch(
                    path,
                    {
                        "metadata": {"resourceVersion": version} if version else {},
                        "data": fresh.secret_data(),
                    },
                )
                log.warning(
                    "Renewed the webhook certificate (expiring, unreadable or for other names)",
                    extra={"fields": {"secret": settings.secret, "hostnames": hostnames}},
                )
        except KubeApiError as error:
            if error.status == 409:  # another replica won the race: use theirs
                continue
            raise
        return fresh, current
    raise RuntimeError(
        f"the webhook certificate Secret {settings.namespace}/{settings.secret} "
        "kept changing under this replica"
    )


def bundle_with(cert: ServingCertificate, previous: ServingCertificate | None) -> bytes:
    """The CA bundle: the certificate, plus the one it replaced while that is still valid."""
    if previous is None or previous.cert_pem == cert.cert_pem:
        return cert.cert_pem
    return cert.cert_pem + previous.cert_pem


def _trusts(webhook: Mapping[str, Any], cert_pem: bytes) -> bool:
    try:
        bundle = base64.b64decode((webhook.get("clientConfig") or {}).get("caBundle") or "")
    except ValueError:
        return False
    return cert_pem.strip() in bundle


async def publish_ca_bundle(
    api: KubeApi, configuration: str, bundle: bytes, *, served: bytes | None = None
) -> bool:
    """Write ``bundle`` as the ``caBundle`` of every webhook in ``configuration``.

    Webhooks whose bundle already trusts ``served`` (default: ``bundle``) are
    left alone, so a replica starting after a renewal does not drop the old
    certificate that replicas not yet restarted still serve. Returns False
    (and warns) when the configuration does not exist: the operator then
    serves a webhook that nothing calls, which is what the cluster asked for.
    """
    path = f"{MWC_PATH}/{configuration}"
    encoded = base64.b64encode(bundle).decode("ascii")
    must_trust = served if served is not None else bundle
    for _ in range(3):
        mwc = await api.get(path)
        if mwc is None:
            log.warning(
                "No MutatingWebhookConfiguration to trust the webhook certificate; "
                "no pod will be injected",
                extra={"fields": {"configuration": configuration}},
            )
            return False
        webhooks = [dict(w) for w in mwc.get("webhooks") or [] if isinstance(w, dict)]
        if all(_trusts(w, must_trust) for w in webhooks):
            return True
        for webhook in webhooks:
            if not _trusts(webhook, must_trust):
                webhook["clientConfig"] = {
                    **(webhook.get("clientConfig") or {}),
                    "caBundle": encoded,
                }
        version = (mwc.get("metadata") or {}).get("resourceVersion")
        try:
            # A merge patch replaces the whole list: the resourceVersion makes
            # sure it is the list we just read.
            await api.merge_patch(
                path,
                {
                    "metadata": {"resourceVersion": version} if version else {},
                    "webhooks": webhooks,
                },
            )
        except KubeApiError as error:
            if error.status == 409:
                continue
            raise
        log.info(
            "Published the webhook CA bundle", extra={"fields": {"configuration": configuration}}
        )
        return True
    raise RuntimeError(f"MutatingWebhookConfiguration {configuration} kept changing")


def server_from_certificate(
    cert: ServingCertificate, *, port: int, addr: str = "0.0.0.0"
) -> NamespacedWebhookServer:
    """kopf's webhook server on ``cert``, written to a private directory for it to load.

    kopf (and :mod:`ssl`) load certificates from files only. The directory is
    created for this process alone (mode 0700, files 0600) under the
    temporary directory, an ``emptyDir`` in the operator's pod, and removed
    when the process exits.
    """
    scratch = Path(tempfile.mkdtemp(prefix="openai-runtime-webhook-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    cert_file, key_file = scratch / CERT_KEY, scratch / PKEY_KEY
    for file, data in ((cert_file, cert.cert_pem), (key_file, cert.key_pem)):
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
    return NamespacedWebhookServer(addr=addr, port=port, certfile=cert_file, pkeyfile=key_file)


def server_from_cert_dir(
    directory: str | Path, *, port: int, addr: str = "0.0.0.0"
) -> NamespacedWebhookServer:
    """kopf's webhook server on ``tls.crt``/``tls.key`` in ``directory`` (reloaded on change)."""
    base = Path(directory)
    missing = [name for name in (CERT_KEY, PKEY_KEY) if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{base}: no {' or '.join(missing)} for the webhook certificate")
    return NamespacedWebhookServer(
        addr=addr, port=port, certfile=base / CERT_KEY, pkeyfile=base / PKEY_KEY
    )


async def prepare_webhook(
    api: KubeApi,
    settings: SelfSignedSettings,
    *,
    port: int,
    now: datetime.datetime | None = None,
) -> NamespacedWebhookServer:
    """Self-signed bootstrap: ensure the shared certificate, trust it, build the server."""
    moment = now or datetime.datetime.now(datetime.UTC)
    cert, previous = await ensure_certificate(api, settings, now=moment)
    still_valid = previous is not None and previous.usable_for(
        [], now=moment, renew_before=datetime.timedelta(0)
    )
    bundle = bundle_with(cert, previous if still_valid else None)
    await publish_ca_bundle(api, settings.configuration, bundle, served=cert.cert_pem)
    server = server_from_certificate(cert, port=port)
    server.ca_bundle, server.ca_served = bundle, cert.cert_pem
    return server


async def keep_ca_bundle_published(
    api: Callable[[], KubeApi],
    configuration: str,
    server: NamespacedWebhookServer,
    *,
    interval: float,
) -> None:
    """Re-assert the self-signed CA bundle every ``interval`` seconds, for ever.

    Written once at start-up it would not survive a GitOps tool restoring the
    manifest's empty ``caBundle``, nor a configuration created after the
    operator: both heal here without a restart. Replicas serving an older and
    a newer certificate agree, because each only writes when its own served
    certificate is not trusted, and then the bundle it started with (which
    also trusts the certificate it replaced).
    """
    if server.ca_bundle is None or server.ca_served is None:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await publish_ca_bundle(api(), configuration, server.ca_bundle, served=server.ca_served)
        except (KubeApiError, OSError, TimeoutError, RuntimeError, kopf.TemporaryError) as exc:
            log.warning(
                "Cannot re-assert the webhook CA bundle: %s",
                exc,
                extra={"fields": {"configuration": configuration}},
            )
