"""The operator's small API client, against kmock: paths, 404s, merge patches, auth."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from openai_runtime_operator.kubeapi import KubeApi, KubeApiError, resource_path


def test_resource_paths() -> None:
    assert resource_path("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert resource_path("v1", "namespaces") == "/api/v1/namespaces"
    assert (
        resource_path("infer.atomr.io/v1alpha1", "openairuntimes", "a b")
        == "/apis/infer.atomr.io/v1alpha1/namespaces/a%20b/openairuntimes"
    )


def test_token_source_wins_and_is_read_each_time() -> None:
    tokens = iter(["first", "second"])
    api = KubeApi(
        kopf.ConnectionInfo(server="https://k8s", token="static"),
        token_source=lambda: next(tokens, None),
    )
    assert api._headers()["Authorization"] == "Bearer first"
    assert api._headers()["Authorization"] == "Bearer second"
    assert api._headers()["Authorization"] == "Bearer static"  # file gone: the login's token
    basic = KubeApi(kopf.ConnectionInfo(server="https://k8s", username="u", password="p"))
    assert basic._headers()["Authorization"].startswith("Basic ")


async def test_calls_against_the_emulator(kmock: Any) -> None:
    kmock.resources["v1/configmaps"] = {"kind": "ConfigMap", "namespaced": True, "verbs": ["get"]}
    api = KubeApi(kopf.ConnectionInfo(server=str(kmock.url), insecure=True))
    try:
        path = resource_path("v1", "configmaps", "ns", "cm")
        assert await api.get(path) is None
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns"},
        }
        await api.create(resource_path("v1", "configmaps", "ns"), {**body, "data": {"a": "1"}})
        await api.merge_patch(path, {"data": {"a": None, "b": "2"}})
        fetched = await api.get(path)
        assert fetched is not None and fetched["data"] == {"b": "2"}
        [item] = await api.list_items(resource_path("v1", "configmaps", "ns"), label_selector="x=y")
        assert item["metadata"]["name"] == "cm"
        [request] = [r for r in list(kmock) if r.method == "PATCH"]
        assert request.headers["Content-Type"] == "application/merge-patch+json"
        with pytest.raises(KubeApiError):
            await api.create(resource_path("v1", "configmaps", "ns"), body)  # 409: exists
    finally:
        await api.close()
