"""A tiny async Kubernetes API client for what kopf's public API does not cover.

kopf talks to the API server with its own (private) client; the operator also
needs to read Secrets, create or patch ConfigMaps, list and annotate pods and
patch a runtime's status outside a handler's ``patch``. :class:`KubeApi` does
those few calls with aiohttp, using the :class:`kopf.ConnectionInfo` that the
operator's login handler returned, so both talk to the same server with the
same credentials (in-cluster: the service account's token, re-read on every
call because projected tokens rotate, and its CA; in tests: the emulator URL).

Errors other than 404 raise :class:`KubeApiError`; callers let kopf retry.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

__all__ = ["KubeApi", "KubeApiError", "resource_path"]

MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(Exception):
    """The API server refused a call (status and reason, never the request body)."""

    def __init__(self, method: str, path: str, status: int, reason: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status} {reason}")
        self.status = status


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The REST path of a collection or an object: ``/api/v1/namespaces/ns/pods/name``."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    return base


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    # As in kopf: ``ca_data`` is the kubeconfig's base64-encoded PEM.
    cadata = base64.b64decode(info.ca_data).decode("ascii") if info.ca_data else None
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None, cadata=cadata
    )
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    return context


class KubeApi:
    """JSON calls to one API server. Create inside the event loop; :meth:`close` at the end."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        token_source: Callable[[], str | None] | None = None,
    ) -> None:
        self.server = info.server.rstrip("/")
        self._info = info
        self._token_source = token_source
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._token_source() if self._token_source is not None else None
        token = token or self._info.token
        if token:
            headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {token}"
        elif self._info.username and self._info.password is not None:
            pair = f"{self._info.username}:{self._info.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=16)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=30, connect=10),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One call; the response's JSON, or None for 404."""
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = content_type
        session = self._get_session()
        async with session.request(
            method,
            self.server + path,
            json=dict(body) if body is not None else None,
            params=dict(params) if params else None,
            headers=headers,
        ) as response:
            if response.status == 404:
                return None
            if response.status >= 400:
                raise KubeApiError(method, path, response.status, response.reason or "")
            data = await response.json(content_type=None)
            return data if isinstance(data, dict) else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def list_items(
        self, path: str, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("GET", path, params=params)
        items = (data or {}).get("items") or []
        return [item for item in items if isinstance(item, dict)]


def service_account_token_source(
    path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token",
) -> Callable[[], str | None]:
    """Reads the (rotating) projected service account token on each call."""
    token_file = Path(path)

    def read() -> str | None:
        try:
            return token_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    return read
