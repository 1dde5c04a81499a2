"""The Grafana dashboard in the chart: well-formed, and honest about the sidecar's metrics.

The structural test reads the JSON only. The live test starts a real sidecar in
front of the fake upstream, makes calls that exercise every metric (plain,
streamed, retried, failed, refused; a key rotation; a config reload), scrapes
``/metrics`` (and the operator's exposition of a runtime's budget) and checks
that every metric a panel or variable queries is exported, and that every label
it selects on, groups by or names in a legend is on that metric's samples.
Renaming a metric or a label fails here, not silently as an empty panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from openai_runtime_operator.telemetry import OperatorTelemetry
from tests.sidecar import conftest as sidecar_fixtures
from tests.support import NEW_KEY, SecretVolume

# The sidecar fixtures (a real sidecar on loopback, in-memory telemetry), shared.
spans = sidecar_fixtures.spans
metrics = sidecar_fixtures.metrics
make_sidecar = sidecar_fixtures.make_sidecar

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "openai-runtime" / "dashboards" / "openai-runtime.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {"datasource", "namespace", "runtime", "model"}

# Labels Prometheus attaches at scrape time (Kubernetes service discovery), never
# the sidecar: allowed in groupings and legends, not checked against /metrics.
TARGET_LABELS = {"pod", "instance"}

METRIC = re.compile(r"\b((?:openai_runtime|gen_ai)_[A-Za-z0-9_]+)")
SELECTOR = re.compile(r"\b((?:openai_runtime|gen_ai)_[A-Za-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(sum|min|max|avg|count|stddev|stdvar|group|topk|bottomk)\s+by\s*\(")
BY = re.compile(r"\bby\s*\(")
LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUES = re.compile(
    r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)$"
)
RATE_WINDOW = re.compile(r"\b(?:rate|increase)\((.*?)\[([^\]]+)\]\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Samples = dict[str, dict[str, set[str]]]  # metric -> label -> values seen


# -- reading the dashboard -----------------------------------------------------------


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target."""
    found = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} {target.get('refId')}"
            found.append((where, target["expr"], target.get("legendFormat", "")))
    return found


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


# -- reading /metrics ------------------------------------------------------------------


def parse_samples(text: str) -> tuple[Samples, dict[str, str]]:
    """Labels and values per sample name, and the ``# TYPE`` of each family."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+$", line)
        assert match is not None, f"unparsable sample line: {line!r}"
        labels = samples.setdefault(match.group(1), {})
        for name, value in re.findall(
            r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', match[2] or ""
        ):
            labels.setdefault(name, set()).add(value)
    return samples, types


def closing(text: str, start: int) -> int:
    """The index just past the ``)`` matching the ``(`` at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def groupings(expr: str) -> list[tuple[set[str], str]]:
    """Each ``op by (labels) (body)`` in ``expr`` as (labels, body)."""
    found = []
    for match in GROUPING.finditer(expr):
        labels_end = closing(expr, match.end() - 1)
        labels = {label.strip() for label in expr[match.end() : labels_end - 1].split(",")}
        body_start = labels_end
        while body_start < len(expr) and expr[body_start] == " ":
            body_start += 1
        assert expr[body_start : body_start + 1] == "(", f"write `op by (labels) (expr)`: {expr}"
        found.append((labels - {""}, expr[body_start : closing(expr, body_start)]))
    return found


def metric_names(expr: str) -> list[str]:
    """Metric names in ``expr``: prefixed identifiers outside label matchers and groupings."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\bby\s*\([^)]*\)", "", bare)
    return METRIC.findall(bare)


def family(name: str, types: dict[str, str]) -> str:
    """The family a sample name belongs to (``x_bucket`` -> ``x`` for a histogram ``x``)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def check_expr(expr: str, samples: Samples, types: dict[str, str], legend: str = "") -> list[str]:
    """What in ``expr`` (and its legend) is not backed by the scraped samples."""
    problems: list[str] = []

    def check_label(name: str, label: str, where: str) -> None:
        if name not in samples:
            return  # reported once, as a missing metric
        if label not in samples[name] and label not in TARGET_LABELS:
            problems.append(f"{name}: no label {label!r} ({where}); has {sorted(samples[name])}")

    if len(BY.findall(expr)) != len(GROUPING.findall(expr)):
        problems.append(f"only `op by (labels) (expr)` groupings are understood: {expr}")
    names = metric_names(expr)
    if not names:
        problems.append(f"queries no openai_runtime_/gen_ai_ metric: {expr}")
    for name in names:
        if name not in samples:
            problems.append(f"{name} (family {family(name, types)}) is not in /metrics")
        elif types.get(family(name, types)) is None:
            problems.append(f"{name} has no # TYPE line")
    for name, matchers in SELECTOR.findall(expr):
        if name not in names:
            continue  # a label name inside braces or a grouping
        for label, op, value in MATCHER.findall(matchers):
            check_label(name, label, f"matcher {label}{op}{value!r}")
            literal = "$" not in value
            seen = samples.get(name, {}).get(label)
            if op in ("=", "!=") and literal and seen is not None and value not in seen:
                problems.append(f"{name}: {label} is never {value!r}; seen {sorted(seen)}")
    grouped: set[str] = set()
    for labels, body in groupings(expr):
        grouped |= labels
        for name in metric_names(body):
            for label in labels:
                check_label(name, label, "by (...)")
    for label in LEGEND.findall(legend):
        if label not in grouped:
            problems.append(f"legend {{{{{label}}}}} is not in any by (...) of {expr}")
    for _, window in RATE_WINDOW.findall(expr):
        if window not in ("$__rate_interval", "$__range"):
            problems.append(f"window [{window}]: use $__rate_interval (or $__range): {expr}")
    return problems


def check_variable(query: str, samples: Samples) -> list[str]:
    match = LABEL_VALUES.match(query)
    if match is None:
        return [f"not label_values(metric{{...}}, label): {query}"]
    name, matchers, label = match.groups()
    if name not in samples:
        return [f"{name} is not in /metrics"]
    return [
        f"{name}: no label {used!r}"
        for used in (label, *(m[0] for m in MATCHER.findall(matchers or "")))
        if used not in samples[name]
    ]


# -- structure ---------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dashboard = load()
    assert dashboard["uid"] == "openai-runtime-sidecar"
    assert dashboard["title"] == "openai-runtime sidecar"
    assert dashboard["schemaVersion"] == 39
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8"), "import-time inputs"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in VARIABLES - {"datasource"}:
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE, name
        assert variables[name]["query"]["query"].startswith("label_values("), name

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    targets = 0
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid), where
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            targets += 1
            assert target["expr"].strip(), where
            assert target["refId"], where
            assert target["datasource"] == DATASOURCE, where
            assert 'runtime=~"$runtime"' in target["expr"], f"{where}: not filtered by runtime"
    assert targets >= 20


def test_circuit_state_is_mapped_to_names() -> None:
    (circuit,) = [
        panel
        for panel in all_panels(load()["panels"])
        if "openai_runtime_circuit_state" in json.dumps(panel.get("targets", []))
    ]
    (mapping,) = circuit["fieldConfig"]["defaults"]["mappings"]
    texts = {value: option["text"] for value, option in mapping["options"].items()}
    assert texts == {"0": "closed", "1": "half-open", "2": "open"}


def test_the_checker_catches_a_misspelt_metric_or_label() -> None:
    samples, types = parse_samples(
        "# TYPE openai_runtime_requests_total counter\n"
        'openai_runtime_requests_total{outcome="ok",runtime="a/b"} 1\n'
        "# TYPE gen_ai_client_operation_duration_seconds histogram\n"
        "gen_ai_client_operation_duration_seconds_bucket"
        '{le="+Inf",openai_runtime_runtime="a/b"} 1\n'
    )
    good = (
        "sum by (outcome) (rate("
        'openai_runtime_requests_total{runtime=~"$runtime"}[$__rate_interval]))'
    )
    assert check_expr(good, samples, types, "{{outcome}}") == []
    quantile = (
        "histogram_quantile(0.9, sum by (le) (rate("
        'gen_ai_client_operation_duration_seconds_bucket{openai_runtime_runtime=~"$runtime"}'
        "[$__rate_interval])))"
    )
    assert check_expr(quantile, samples, types) == []
    for broken in (
        good.replace("requests_total", "request_total"),  # misspelt metric
        good.replace("by (outcome)", "by (outcome, model)"),  # label not exported
        good.replace('runtime=~"$runtime"', 'runtme=~"$runtime"'),  # misspelt matcher label
        good.replace('runtime=~"$runtime"', 'outcome="success"'),  # a value never seen
        good.replace("$__rate_interval", "5m"),  # fixed window
        quantile.replace("openai_runtime_runtime", "runtime"),  # the GenAI metrics' label
    ):
        assert check_expr(broken, samples, types, "{{outcome}}"), broken
    assert check_expr(good, samples, types, "{{model}}"), "legend label not grouped by"
    assert check_variable("label_values(openai_runtime_requests_total, outcome)", samples) == []
    assert check_variable("label_values(openai_runtime_requests_total, model)", samples)


# -- against a real sidecar ----------------------------------------------------------------

USER = {"role": "user", "content": "Say hello."}


async def test_every_queried_metric_and_label_is_exported(
    make_sidecar: sidecar_fixtures.SidecarFactory, secret_dir: SecretVolume
) -> None:
    sidecar = await make_sidecar(models={"allow": ["gpt-4o-mini"]})
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="not-the-real-key", max_retries=0
    ) as client:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[USER])
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[USER],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        # A 500 then a success: one retry.
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[USER],
            extra_headers={
                "x-fake-scenario": "server-error",
                "x-fake-fail-times": "1",
                "x-fake-sequence": "dashboard-retry",
            },
        )
        with pytest.raises(openai.BadRequestError):  # upstream refuses
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[USER],
                extra_headers={"x-fake-scenario": "context-length"},
            )
        with pytest.raises(openai.BadRequestError):  # the sidecar refuses
            await client.chat.completions.create(model="gpt-4o", messages=[USER])

    # Reloads, each result once. A write and its reload run with no await in
    # between, so the file watchers cannot get there first.
    secret_dir.write(NEW_KEY)
    assert sidecar.reload_credential().changed  # rotated
    secret_dir.write("")
    assert sidecar.reload_credential().error is not None  # failed; the key in use stays
    assert sidecar.config_path is not None
    document = yaml.safe_load(sidecar.config_path.read_text(encoding="utf-8"))
    sidecar.config_path.write_text("models: [", encoding="utf-8")
    assert not sidecar.reload_config()  # rejected
    document["models"] = {"allow": ["gpt-4o-mini", "gpt-4o"]}
    sidecar.config_path.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert sidecar.reload_config()  # applied

    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + "/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    # The budget panels read the operator's gauges: its real exposition of them,
    # for this runtime (its other families are for the operator's own dashboards).
    operator = OperatorTelemetry()
    operator.budget(sidecar.config.runtime.namespace, sidecar.config.runtime.name, 1.25, 10.0)
    exposition = operator.prometheus_text().splitlines()
    operator.shutdown()
    text += "".join(line + "\n" for line in exposition if "_budget_" in line)
    samples, types = parse_samples(text)

    dashboard = load()
    problems: list[str] = []
    for where, expr, legend in queries(dashboard):
        problems += [f"{where}: {problem}" for problem in check_expr(expr, samples, types, legend)]
    for name, query in variable_queries(dashboard):
        problems += [f"variable {name}: {problem}" for problem in check_variable(query, samples)]
    assert not problems, "\n".join(problems) + "\n\n/metrics:\n" + text

    # Every metric family the sidecar exports has a panel.
    queried = {
        family(name, types) for _, expr, _ in queries(dashboard) for name in metric_names(expr)
    }
    assert set(types) <= queried, f"exported but on no panel: {sorted(set(types) - queried)}"
