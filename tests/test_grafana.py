"""The Grafana dashboard and provisioning of deploy/grafana, checked without Grafana: every metric a
panel or a template variable queries is one the relay exports (read from `relay.metrics.Metrics()`'s
registry), the dashboard has the shape Grafana loads, the provisioning files parse and point where
docker-compose.yml mounts and runs things, and the README's "Dashboard and compose" says what the
files hold (its commands, panels, ports, and the walkthrough's log line and call record)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from relay.logs import JsonFormatter
from relay.metrics import Metrics
from relay.testing.realtime import Say
from tests.rig import rig

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

# The series names a metric family of each type exposes (prometheus_client strips a counter's
# `_total` from the family name).
SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_series(metrics: Metrics) -> dict[str, str]:
    """Every series name the registry exposes → the metric as declared (`relay_calls_total`, or a
    histogram's name for its `_bucket`, `_sum` and `_count`)."""
    out: dict[str, str] = {}
    for family in metrics.registry.collect():
        declared = family.name + "_total" if family.type == "counter" else family.name
        for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = declared
    return out


def accepted_series() -> dict[str, str]:
    return exported_series(Metrics())


# --- PromQL: the metric names an expression selects -------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r"__name__\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_MODIFIER = re.compile(r"\boffset\s+-?\S+|@\s*(?:start\(\)|end\(\)|[0-9.]+)", re.I)
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\[\[[^\]]*\]\]|\$\w+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.I)
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions,
    keywords, label names (matchers, grouping), numbers, durations nor Grafana variables, plus
    `{__name__="..."}` selectors."""
    names = {m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(expr)}
    text = _GRAFANA_VARIABLE.sub(" ", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _MODIFIER.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def variable_exprs(query: str) -> list[str]:
    """The PromQL inside a Grafana Prometheus variable query (`label_values(selector, label)`,
    `query_result(expr)`); `label_values(label)` and `metrics(regex)` select no metric."""
    call = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", query, re.S)
    if call is None:
        return [query]
    function, inner = call.groups()
    if function == "label_values":
        selector, comma, _label = inner.rpartition(",")
        return [selector] if comma else []
    if function == "query_result":
        return [inner]
    return []


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum(relay_active_calls)", {"relay_active_calls"}),
        (
            "histogram_quantile(0.95, sum by (le, path) "
            '(rate(relay_turn_latency_seconds_bucket{agent=~"$agent"}[$__rate_interval])))',
            {"relay_turn_latency_seconds_bucket"},
        ),
        (
            'rate(a_total{x="by (y) sum(z_total)"}[5m]) '
            'or rate(b_total{to_agent=~"${agent:regex}"}[1h30m] offset 1d)',
            {"a_total", "b_total"},
        ),
        ("60 * sum without (instance) (c_total) / on(job) group_left(mode) d > bool 1e3", {"c_total", "d"}),
        (
            '{__name__="e_seconds_count", job="relay"} unless ignoring(le) f:recorded',
            {"e_seconds_count", "f:recorded"},
        ),
        ("max_over_time(g[$__range:1m]) > Inf and h @ end()", {"g", "h"}),
    ],
)
def test_metric_names_parses_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_variable_exprs_finds_the_selector() -> None:
    assert variable_exprs("label_values(relay_calls_total, agent)") == ["relay_calls_total"]
    assert variable_exprs("label_values(relay_calls_total{mode='cascade'}, agent)") == [
        "relay_calls_total{mode='cascade'}"
    ]
    assert variable_exprs("label_values(agent)") == []
    assert variable_exprs("query_result(sum by (agent) (relay_calls_total))") == [
        "sum by (agent) (relay_calls_total)"
    ]


# --- the dashboards ----------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    assert isinstance(value, dict), path
    return value


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        for expr in variable_exprs(text):
            yield f"variable {variable['name']!r}", expr


def used_metrics(dashboard: dict[str, Any], series: dict[str, str]) -> set[str]:
    return {series.get(name, name) for _, expr in queries(dashboard) for name in metric_names(expr)}


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["relay.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_is_exported_by_the_relay(path: Path) -> None:
    series = accepted_series()
    missing = {
        f"{where}: {name}"
        for where, expr in queries(load(path))
        for name in metric_names(expr)
        if name not in series
    }
    assert not missing, f"not exported by relay.metrics.Metrics(): {sorted(missing)}"


def test_the_dashboard_covers_the_issue_list() -> None:
    """Issue 20's panels: active calls, calls by outcome, turn latency by path, first audio,
    fallbacks by cause, tools and their errors, event-loop lag, the store; and handoffs, outbound
    calls, AMD results, post-call deliveries and, for a fleet (issue 21), the early connections
    wasted without call affinity."""
    used = used_metrics(load(GRAFANA / "dashboards" / "relay.json"), accepted_series())
    wanted = {
        "relay_active_calls",
        "relay_calls_total",
        "relay_turn_latency_seconds",
        "relay_first_audio_seconds",
        "relay_fallbacks_total",
        "relay_tool_calls_total",
        "relay_event_loop_lag_seconds",
        "relay_store_errors_total",
        "relay_store_up",
        "relay_store_pending_writes",
        "relay_handoffs_total",
        "relay_outbound_calls_total",
        "relay_amd_results_total",
        "relay_post_call_deliveries_total",
        "relay_preconnects_total",
        "relay_preconnects_missed_total",
    }
    assert wanted <= used, sorted(wanted - used)


def test_turn_latency_is_p50_p95_p99_by_path() -> None:
    dashboard = load(GRAFANA / "dashboards" / "relay.json")
    (panel,) = [p for p in all_panels(dashboard) if p["title"] == "Turn latency by path"]
    exprs = [t["expr"] for t in panel["targets"]]
    for q in ("0.5", "0.95", "0.99"):
        (expr,) = [e for e in exprs if e.startswith(f"histogram_quantile({q},")]
        assert re.search(r"by \(le, path\)", expr) and "relay_turn_latency_seconds_bucket" in expr, expr


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_grafana_shape(path: Path) -> None:
    dashboard = load(path)
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in all_panels(dashboard) if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        where = panel.get("title")
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, where
        assert panel["title"] and panel["description"], where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"] == datasource, where
        targets = panel["targets"]
        refs = [t["refId"] for t in targets]
        assert targets and len(refs) == len(set(refs)), where
        for target in targets:
            assert target["datasource"] == datasource and target["expr"].strip(), where
    cells = [
        (x, y)
        for p in all_panels(dashboard)
        for g in [p["gridPos"]]
        for x in range(g["x"], g["x"] + g["w"])
        for y in range(g["y"], g["y"] + g["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    for where, expr in queries(dashboard):
        used = {m.strip("${}[]").split(":")[0] for m in _GRAFANA_VARIABLE.findall(expr)}
        assert used <= set(variables) | GRAFANA_BUILTINS, (where, used)


def test_agent_variable_selects_every_agent_by_default() -> None:
    variables = {v["name"]: v for v in load(GRAFANA / "dashboards" / "relay.json")["templating"]["list"]}
    agent = variables["agent"]
    assert agent["includeAll"] and agent["multi"] and agent["allValue"] == ".*"
    assert agent["current"]["value"] == "$__all"


# --- provisioning --------------------------------------------------------------------------------


def provisioning(kind: str) -> dict[str, Any]:
    (path,) = (GRAFANA / "provisioning" / kind).glob("*.yml")
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and doc["apiVersion"] == 1, path
    return doc


def container_port(service: str) -> str:
    """The container side of a service's first published port ("9090:9090" → "9090")."""
    return str(COMPOSE["services"][service]["ports"][0]).rsplit(":", 1)[1]


def mount_target(service: str, source: str) -> str:
    for volume in COMPOSE["services"][service]["volumes"]:
        host, target, *_ = volume.split(":")
        if host == source:
            return target
    raise AssertionError(f"{service} does not mount {source}")


def test_datasources_point_at_the_compose_services() -> None:
    sources = {d["type"]: d for d in provisioning("datasources")["datasources"]}
    prometheus = sources["prometheus"]
    assert prometheus["url"] == f"http://prometheus:{container_port('prometheus')}"
    assert prometheus["isDefault"] is True and prometheus["access"] == "proxy"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    assert "16686:16686" in COMPOSE["services"]["jaeger"]["ports"]


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    (provider,) = provisioning("dashboards")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mount_target("grafana", "./deploy/grafana/dashboards")
    assert mount_target("grafana", "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    home = COMPOSE["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/relay.json"


# --- the README's "Dashboard and compose" ------------------------------------------------------


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Dashboard and compose")
    end = text.index("\n## ", start)
    return text[start:end]


def test_readme_commands_use_the_profile_and_files_that_exist() -> None:
    commands = [line.strip() for line in readme_section().splitlines() if line.startswith("docker compose")]
    assert len(commands) == 2, commands
    profiles = {p for s in COMPOSE["services"].values() for p in s.get("profiles", [])}
    for command in commands:
        words = command.split()
        assert words[words.index("--profile") + 1] in profiles, command
        files = [words[i + 1] for i, w in enumerate(words) if w == "-f"]
        assert all((ROOT / f).is_file() for f in files), command
    assert "deploy/compose.traces.yml" in commands[1]


def test_readme_lists_every_panel() -> None:
    listed = set(re.findall(r"^\| \*\*(.+?)\*\* \|", readme_section(), re.M))
    titles = {
        p["title"] for p in all_panels(load(GRAFANA / "dashboards" / "relay.json")) if p["type"] != "row"
    }
    assert listed == titles


def test_readme_figures_match_the_files() -> None:
    section = readme_section()
    services = COMPOSE["services"]
    for service, port in (("prometheus", "9090"), ("grafana", "3000"), ("jaeger", "16686")):
        assert f"http://localhost:{port}" in section and f"{port}:{port}" in services[service]["ports"]
    assert "4318:4318" in services["jaeger"]["ports"]
    assert (
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    )
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert scrape == "15s" and "every 15 s" in section
    (lag,) = [
        p
        for p in all_panels(load(GRAFANA / "dashboards" / "relay.json"))
        if p["title"] == "Event-loop lag p99"
    ]
    steps = [s["value"] for s in lag["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.005, 0.02] and "yellow from 5 ms, red from 20 ms" in section


async def test_readme_walkthrough_finds_a_call_by_its_sid(caplog: pytest.LogCaptureFixture) -> None:
    """Steps 2 and 3: the call's `call ended` JSON line carries its SID (what the README's jq filter
    selects), and GET /calls/{sid} gives its figures per phase, with the per-turn latencies."""
    token = "walkthrough-token"
    replies = [Say("Hello.", audio_ms=200)]
    async with (
        rig("openai-ga", settings={"relay_admin_token": token}, responses=replies) as r,
        r.caller() as call,
    ):
        conn = await r.dial(call)
        await conn.wait_for("response.done")
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
        docs = [orjson.loads(JsonFormatter().format(record)) for record in caplog.records]
        ended = [d for d in docs if d["msg"].startswith("call ended")]
        assert [d["call_sid"] for d in ended] == [call.call_sid]
        assert {"ts", "call_sid", "msg"} <= set(ended[0])
        async with httpx.AsyncClient(base_url=r.url) as client:
            response = await client.get(
                f"/calls/{call.call_sid}", headers={"Authorization": f"Bearer {token}"}
            )
    assert response.status_code == 200
    (phase,) = response.json()["stats"]
    assert isinstance(phase["response_latencies_ms"], list)
    assert isinstance(phase["turn_latencies_ms"], list) and isinstance(phase["heard_latencies_ms"], list)
