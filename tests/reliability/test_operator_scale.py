"""The operator at scale, in-process, against kmock's Kubernetes emulator.

Hundreds of runtimes at once: all become Ready with their ConfigMap, a Secret
shared by a hundred of them rotates into every status and every pod, the
operator's background tasks settle afterwards and the API sees a bounded
number of requests per runtime. Wall times are printed (``-s`` shows them);
the only time bounds asserted are generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from openai_runtime_operator.resync import resync_once
from openai_runtime_sidecar.runner.credentials import fingerprint

from ..operator.test_operator import (
    NS,
    PODS_URL,
    RUNTIMES,
    RUNTIMES_URL,
    SECRETS_URL,
    Cluster,
    assert_no_key_leaked,
    b64,
    declare,
    eventually,
    operator,
    pod,
    runtime,
    secret,
)
from ..support import NEW_KEY, OLD_KEY

__all__ = ["declare", "operator"]  # the kmock fixtures, shared with tests/operator

MERGE = {"Content-Type": "application/merge-patch+json"}
SCALE = 500
SHARED = 100
BURST = 200
REQUESTS_PER_RUNTIME = 12
"""Upper bound of API requests about one runtime (its object, status and ConfigMap, kopf's
own annotation patches included) while it is listed or created and reconciled.

Measured: 11 for a listed runtime, at most 7 for a created one. kmock keeps every
resourceVersion at "1", so kopf handles each runtime a second time after its status
patch (about 3 requests more than against a real API server)."""


class Pending:
    """A falsy check result that says what is still missing (in the timeout's message)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.what


def all_ready(operator: Cluster, names: Iterable[str]) -> Callable[[], Any]:
    """A check: every runtime is Ready=True for its generation, with its ConfigMap."""
    pending = set(names)

    def check() -> Any:
        for name in sorted(pending):
            cond = operator.condition(name, "Ready")
            if (
                cond is not None
                and cond["status"] == "True"
                and cond.get("observedGeneration") == 1
                and operator.get("v1/configmaps", f"{name}-openai-runtime") is not None
            ):
                pending.discard(name)
        if pending:
            first = min(pending)
            return Pending(
                f"{len(pending)} not Ready, e.g. {first}: {operator.get(RUNTIMES, first)}"
            )
        return True

    return check


class Archive:
    """kmock's requests, moved out of kmock as soon as each is served.

    kmock matches every new request against every request it logged before
    (``request in view`` walks the whole log), so its cost grows with the log:
    measured on 2 cores, 55 GETs/s with an empty log, 12/s once 600 requests
    were logged, while thousands are needed here. With each served request
    moved into this archive the log holds only those in flight (about 800/s).
    It stands in for kmock in :func:`assert_no_key_leaked`: ``objects`` and
    iteration over every request, archived or in flight.
    """

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        self.objects = kmock.objects
        self.served: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        yield from list(self.served)
        yield from list(self.kmock)

    def __len__(self) -> int:
        return len(self.served) + len(list(self.kmock))


@pytest.fixture
def archive(declare: Any, monkeypatch: pytest.MonkeyPatch) -> Archive:
    found = Archive(declare)
    handle = type(declare)._handle

    async def archiving(self: Any, request: Any) -> Any:
        try:
            return await handle(self, request)
        finally:
            if self is declare:
                # Private to kmock: the log its matching walks (see Archive).
                with contextlib.suppress(ValueError):
                    self._requests.remove(request)
                    found.served.append(request)

    monkeypatch.setattr(type(declare), "_handle", archiving)
    return found


def kinds(requests: Iterable[Any]) -> Counter[str]:
    """Requests by method and kind of path (``PATCH runtime/status``, ``GET pods``...)."""
    found: Counter[str] = Counter()
    for request in requests:
        parts = str(request.url.path).strip("/").split("/")
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            rest = parts[parts.index("namespaces") + 2 :]
        else:
            rest = parts[-1:]
        what = rest[0] + ("/" + rest[2] if len(rest) > 2 else "" if len(rest) > 1 else "[]")
        watch = "?watch" if request.params.get("watch") else ""
        found[f"{request.method.value} {what}{watch}"] += 1
    return found


def per_runtime(archive: Archive, names: Iterable[str]) -> Counter[str]:
    """API requests naming each runtime (its object, status, ConfigMap), by runtime."""
    wanted = set(names)
    counts: Counter[str] = Counter()
    for request in archive:
        parts = str(request.url.path).rstrip("/").split("/")
        if len(parts) < 2:
            continue
        # .../openairuntimes/<name>[/status] or .../configmaps/<name>-openai-runtime
        last = parts[-2] if parts[-1] == "status" else parts[-1]
        name = last.removesuffix("-openai-runtime")
        if name in wanted:
            counts[name] += 1
    return counts


async def settled(operator: Cluster, archive: Archive, within: float = 60.0) -> int:
    """Wait for quiet: no API request for half a second, the operator's own
    background tasks down to the resync and budget loops; how many are left.

    (kmock keeps every resourceVersion at "1", so kopf handles each object a
    second time after the status patch: "all Ready" comes before the quiet.)
    """
    loop = asyncio.get_running_loop()
    seen, since = -1, loop.time()

    def quiet() -> bool:
        nonlocal seen, since
        count = len(archive)
        if count != seen:
            seen, since = count, loop.time()
        return loop.time() - since >= 0.5 and len(operator.ctx._tasks) <= 2

    try:
        await eventually(quiet, "the operator to settle", within)
    except AssertionError as error:
        raise AssertionError(
            f"{error}; requests so far {len(archive)}, "
            f"operator background tasks {len(operator.ctx._tasks)}"
        ) from None
    return len(operator.ctx._tasks)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.timeout(240)
async def test_hundreds_of_runtimes_become_ready(
    archive: Archive, operator: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    listed = [f"listed-{i:03d}" for i in range(SCALE)]
    for name in listed:
        kmock.objects[RUNTIMES, NS, name] = runtime(name)
    started = time.monotonic()
    await operator.start()
    await eventually(all_ready(operator, listed), f"{SCALE} listed runtimes Ready", 60)
    listed_s = time.monotonic() - started
    await settled(operator, archive)
    listed_counts = per_runtime(archive, listed)

    burst = [f"burst-{i:03d}" for i in range(BURST)]
    before = len(archive)
    started = time.monotonic()
    await asyncio.gather(*(kmock.post(RUNTIMES_URL, json=runtime(n)) for n in burst))
    await eventually(all_ready(operator, burst), f"{SCALE} created runtimes Ready", 60)
    burst_s = time.monotonic() - started
    remaining = await settled(operator, archive)
    busy = len(asyncio.all_tasks())  # kopf's per-object workers idle 5 s before exiting

    counts = per_runtime(archive, burst)
    one = kinds(r for r in archive if str(r.url.path).split("/")[-1].startswith(listed[0]))
    methods = kinds(list(archive)[before:])
    print(
        f"\n{SCALE} listed runtimes Ready in {listed_s:.2f}s "
        f"(requests per runtime: max {max(listed_counts.values())}, "
        f"mean {sum(listed_counts.values()) / SCALE:.1f}; "
        f"{listed[0]}: {dict(sorted(one.items()))}); "
        f"{BURST} created at once Ready in {burst_s:.2f}s "
        f"(requests per runtime: max {max(counts.values())}, "
        f"mean {sum(counts.values()) / BURST:.1f}; all burst requests by kind: "
        f"{dict(sorted(methods.items()))}); operator background tasks left: {remaining}; "
        f"asyncio tasks when quiet: {busy}"
    )
    assert set(counts) == set(burst) and set(listed_counts) == set(listed)
    assert max(counts.values()) <= REQUESTS_PER_RUNTIME
    assert max(listed_counts.values()) <= REQUESTS_PER_RUNTIME
    assert not errors(caplog)
    assert_no_key_leaked(archive)


@pytest.mark.timeout(240)
async def test_shared_secret_rotation_fans_out(
    archive: Archive, operator: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    names = [f"shared-{i:03d}" for i in range(SHARED)]
    for name in names:
        kmock.objects[RUNTIMES, NS, name] = runtime(name)
        kmock.objects["v1/pods", NS, f"{name}-pod"] = pod(f"{name}-pod", name)
    await operator.start()
    await eventually(all_ready(operator, names), f"{SHARED} runtimes Ready", 60)
    await settled(operator, archive)
    old = {n: operator.status(n)["credential"] for n in names}
    assert all(c == {"fingerprint": fingerprint(OLD_KEY), "rotations": 0} for c in old.values())

    new = fingerprint(NEW_KEY)
    before = len(archive)
    started = time.monotonic()
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(
        lambda: all(
            operator.status(n).get("credential", {}).get("fingerprint") == new for n in names
        ),
        "every status follows the rotation",
        60,
    )
    statuses_s = time.monotonic() - started
    await eventually(
        lambda: all(operator.annotation(f"{n}-pod") == new for n in names),
        "every pod annotated",
        60,
    )
    pods_s = time.monotonic() - started
    remaining = await settled(operator, archive)
    during = list(archive)[before:]
    methods = kinds(during)
    print(
        f"\nrotation of a Secret shared by {SHARED} runtimes: statuses in {statuses_s:.2f}s, "
        f"pods annotated in {pods_s:.2f}s; {len(during)} requests "
        f"({len(during) / SHARED:.1f} per runtime, {dict(sorted(methods.items()))}); "
        f"operator background tasks left: {remaining}"
    )
    for name in names:
        credential = operator.status(name)["credential"]
        assert credential["rotations"] == 1, name
        assert credential["fingerprint"] == new
    patched = Counter(
        str(r.url.path)
        for r in during
        if r.method.value == "PATCH" and str(r.url.path).startswith(f"{PODS_URL}/")
    )
    assert set(patched) == {f"{PODS_URL}/{n}-pod" for n in names}
    assert max(patched.values()) == 1  # each pod nudged once

    # A resync of the settled runtimes reads each afresh and writes nothing:
    # no status PATCH, no ConfigMap, no pod annotation, no Event.
    served = len(archive.served)  # (the watches, still in flight, stay out)
    assert await resync_once(operator.ctx, [NS]) == SHARED
    resynced = kinds(archive.served[served:])
    print(f"resync of {SHARED} settled runtimes: {dict(sorted(resynced.items()))}")
    assert resynced["GET openairuntimes[]"] == 1 and resynced["GET openairuntimes"] >= SHARED
    assert [k for k in resynced if not k.startswith("GET ")] == []
    assert not errors(caplog)
    assert_no_key_leaked(archive)
