"""deploy/k8s/, checked without a cluster: every manifest against the Kubernetes API's schemas of the
version the README names (kubernetes-validate, strict: an unknown field is an error), then what the
schemas cannot see: that the pieces fit each other (selectors, ports, names, the autoscaler and the
budget on the relay, each pod's stream route) and the relay (its settings, routes, probes, drain)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from pydantic import SecretStr
from starlette.routing import Route

from relay.app import create_app
from relay.config import Settings, load_settings
from relay.media_stream import PATHS as MEDIA_STREAM_PATHS
from relay.metrics import Metrics
from relay.sessions.manager import END_CALLS_MARGIN_S
from relay.testing.server import bind_free_port
from tests.test_cli import RelayProcess
from tests.test_docker import DOCKERFILE, exec_form, final_stage

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
README = (ROOT / "README.md").read_text()
K8S_README = (K8S / "README.md").read_text()
EXAMPLES = {"secret.example.yaml", "hpa-active-calls.example.yaml"}  # applied by hand, not by -k
WEBHOOK_PATHS = {
    "/incoming-call",
    "/call-status",
    "/outbound-answer",
    "/amd-status",
    "/recording-status",
    "/transfer-whisper",
}


def kubernetes_section() -> str:
    return README.split("### Kubernetes", 1)[1].split("\n## ", 1)[0]


def kubernetes_version() -> str:
    """The Kubernetes version the README's Kubernetes section names (`Kubernetes 1.33`)."""
    found = re.search(r"Kubernetes (1\.\d+)\b", kubernetes_section())
    assert found, "the README's Kubernetes section names no Kubernetes version"
    return found.group(1)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def applied() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/k8s` creates, plus the Secret it expects to exist (read
    once: not to be changed)."""
    docs = [doc for path in manifest_files() if path.name not in EXAMPLES for doc in documents(path)]
    return [*docs, *documents(K8S / "secret.example.yaml")]


def one(kind: str, name: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (docs or applied()) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in applied() if d["kind"] == kind]


def relay_container() -> dict[str, Any]:
    (container,) = [c for c in relay_pod_spec()["containers"] if c["name"] == "relay"]
    return container


def relay_pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("StatefulSet", "relay")["spec"]["template"]["spec"]
    return spec


def config_data() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "relay-config")["data"]
    return data


def secret_data() -> dict[str, str]:
    data: dict[str, str] = one("Secret", "relay-secrets")["stringData"]
    return data


def setting(name: str) -> Any:
    """A setting's value as the pods get it: the ConfigMap's, else the relay's default."""
    if name in config_data():
        return getattr(manifest_settings(), name.lower())
    return Settings.model_fields[name.lower()].default


@functools.cache
def manifest_settings() -> Settings:
    values = {k.lower(): v for k, v in {**config_data(), **secret_data()}.items()}
    return load_settings(_env_file=None, **values)


def pod_env(pod_name: str) -> dict[str, str]:
    """The container's `env` as the kubelet sets it in pod `pod_name`: fieldRefs resolved, $(VAR)
    expanded from the variables defined before it."""
    env: dict[str, str] = {}
    for var in relay_container()["env"]:
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = pod_name
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def stream_pod_names() -> list[str]:
    """Every pod name the autoscaler may run: relay-0 .. relay-(maxReplicas-1)."""
    hpa = one("HorizontalPodAutoscaler", "relay")
    return [f"relay-{i}" for i in range(hpa["spec"]["maxReplicas"])]


def pod_labels(pod_name: str) -> dict[str, str]:
    labels: dict[str, str] = one("StatefulSet", "relay")["spec"]["template"]["metadata"]["labels"]
    return {**labels, "statefulset.kubernetes.io/pod-name": pod_name}


def ingress_routes() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(host, path, Service name, the Ingress) of every path of every Ingress."""
    for ingress in of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                yield rule["host"], path["path"], path["backend"]["service"]["name"], ingress


# --- the schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_for_the_readme_kubernetes_version(path: Path) -> None:
    version = kubernetes_version()
    docs = documents(path)
    assert docs, path
    for doc in docs:
        try:
            checked = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(exc.message)
        assert checked == version  # its own schemas, not an older version's


def test_strict_validation_refuses_an_unknown_field() -> None:
    pdb = documents(K8S / "pdb.yaml")[0]
    pdb["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="maxUnavailabel"):
        kubernetes_validate.validate(pdb, kubernetes_version(), strict=True)


def test_kustomization_applies_every_manifest_but_the_examples() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    everything = {p.name for p in manifest_files()}
    assert everything >= EXAMPLES
    assert sorted(kustomization["resources"]) == sorted(everything - EXAMPLES)
    (image,) = kustomization["images"]
    assert image["name"] == relay_container()["image"]


# --- the relay's pods ----------------------------------------------------------------------------


def test_image_is_the_dockerfile_build_and_the_relay_is_pid_1() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert relay_container()["image"] == compose["services"]["relay"]["image"]  # built from the Dockerfile
    # SIGTERM reaches the relay only if nothing stands between it and the kubelet: the image's
    # exec-form CMD runs `relay serve` as PID 1, and the pod does not replace it.
    assert "command" not in relay_container() and "args" not in relay_container()
    final = final_stage(DOCKERFILE)
    assert not [a for k, a in final if k == "ENTRYPOINT"]
    (cmd,) = [a for k, a in final if k == "CMD"]
    assert exec_form(cmd) == ["relay", "serve"]
    assert ("STOPSIGNAL", "SIGTERM") in final


def test_pod_runs_as_the_image_user() -> None:
    runs = " ".join(a for k, a in final_stage(DOCKERFILE) if k == "RUN")
    uid = re.search(r"useradd [^&]*--uid (\d+)", runs)
    assert uid, runs
    security = relay_pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(uid.group(1))


def test_probes_are_ready_and_health_on_the_relay_port() -> None:
    container = relay_container()
    (port,) = container["ports"]
    assert port["containerPort"] == setting("PORT") == manifest_settings().port
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    app_paths = {r.path for r in create_app(manifest_settings()).routes if isinstance(r, Route)}
    assert {"/ready", "/health"} <= app_paths


async def test_the_image_command_with_the_manifests_settings_serves_the_probes_and_drains(tmp_path) -> None:
    """The container's process as the kubelet runs it: the image's CMD exec'd (no shell) with the
    pod's environment (bound to loopback, no Redis here); its probes answer 200, and SIGTERM sent
    to that very process starts the drain and ends it within the grace period."""
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {**config_data(), **secret_data(), **pod_env("relay-0"), "HOST": "127.0.0.1", "PORT": str(port)}
    del env["REDIS_URL"]
    (cmd,) = [a for k, a in final_stage(DOCKERFILE) if k == "CMD"]
    program, *args = exec_form(cmd)
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / program,  # the venv's console script, as /opt/venv/bin/relay
        *args,
        env={"PATH": os.environ["PATH"], **env},
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    relay = RelayProcess(proc, f"http://127.0.0.1:{port}", [])
    try:
        await relay.read_until("Application startup complete")
        async with httpx.AsyncClient(base_url=relay.url) as client:
            for probe in ("readinessProbe", "livenessProbe"):
                path = relay_container()[probe]["httpGet"]["path"]
                assert (await client.get(path)).status_code == 200, probe
        proc.send_signal(signal.SIGTERM)
        await relay.read_until("draining: 0 active calls")
        grace = relay_pod_spec()["terminationGracePeriodSeconds"]
        assert await asyncio.wait_for(proc.wait(), timeout=grace) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_one_cpu_requested_and_no_cpu_limit() -> None:
    resources = relay_container()["resources"]
    assert resources["requests"]["cpu"] in ("1", 1, "1000m")
    assert "cpu" not in resources.get("limits", {})


def test_grace_period_outlasts_the_drain_and_the_goodbye() -> None:
    spec = relay_pod_spec()
    pause = 0
    if "lifecycle" in relay_container():
        command = relay_container()["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command
        pause = int(command[1])
    drain = float(setting("DRAIN_TIMEOUT")) + float(setting("TWILIO_API_TIMEOUT")) + END_CALLS_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] > pause + drain


def test_no_fixed_replicas_under_the_autoscaler() -> None:
    assert "replicas" not in one("StatefulSet", "relay")["spec"]


# --- settings ------------------------------------------------------------------------------------


def test_every_variable_is_a_setting() -> None:
    names = {*config_data(), *secret_data(), *pod_env("relay-0")} - {"POD_NAME"}
    unknown = {n for n in names if n.lower() not in Settings.model_fields}
    assert not unknown, f"not settings of relay/config.py: {sorted(unknown)}"
    assert {"TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "REDIS_URL", "RELAY_ADMIN_TOKEN", "PUBLIC_URL"} <= names


def test_secrets_are_in_the_secret_and_only_there() -> None:
    def is_secret(name: str) -> bool:
        field = Settings.model_fields.get(name.lower())
        return field is not None and SecretStr in getattr(field.annotation, "__args__", ())

    assert not [n for n in config_data() if is_secret(n)]
    assert all(is_secret(n) for n in secret_data())
    refs = relay_container()["envFrom"]
    assert {"configMapRef": {"name": "relay-config"}} in refs
    assert {"secretRef": {"name": "relay-secrets"}} in refs


def test_the_settings_are_valid_for_the_relay() -> None:
    settings = manifest_settings()  # ConfigError, naming each bad value, otherwise
    assert settings.public_url == config_data()["PUBLIC_URL"]


def test_readme_secret_command_creates_the_secret_the_pods_read() -> None:
    command = re.search(r"kubectl create secret generic (\S+)((?:\s*\\?\s*--from-literal=\S+)+)", README)
    assert command, "the README shows no `kubectl create secret generic` command"
    assert command.group(1) == "relay-secrets"
    keys = re.findall(r"--from-literal=(\w+)=", command.group(2))
    assert set(keys) == set(secret_data())


def test_redis_url_points_at_the_redis_service() -> None:
    url = urlsplit(secret_data()["REDIS_URL"])
    service = one("Service", url.hostname or "")
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    redis = one("StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 1
    assert matches(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])


# --- selectors, Services, budget, autoscaler -----------------------------------------------------


def test_workload_selectors_match_their_pods() -> None:
    for workload in of_kind("StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(workload["spec"]["selector"]["matchLabels"], labels), workload["metadata"]["name"]
    relay = one("StatefulSet", "relay")
    governing = one("Service", relay["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"  # headless: the pods' stable DNS names


def test_every_service_reaches_pods_on_a_port_they_have() -> None:
    pods = [("relay", pod_labels(p)) for p in stream_pod_names()]
    redis = one("StatefulSet", "redis")["spec"]["template"]
    pods.append(("redis", {**redis["metadata"]["labels"], "statefulset.kubernetes.io/pod-name": "redis-0"}))
    for service in of_kind("Service"):
        workloads = {w for w, labels in pods if matches(service["spec"]["selector"], labels)}
        assert len(workloads) == 1, service["metadata"]["name"]
        template = one("StatefulSet", workloads.pop())["spec"]["template"]
        port_names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names, service["metadata"]["name"]


def test_one_service_per_pod_the_autoscaler_may_run() -> None:
    for pod in stream_pod_names():
        service = one("Service", pod)
        assert service["spec"]["publishNotReadyAddresses"] is True  # reachable while it drains
        assert matches(service["spec"]["selector"], pod_labels(pod))
        others = [p for p in stream_pod_names() if p != pod]
        assert not any(matches(service["spec"]["selector"], pod_labels(p)) for p in others)


def test_budget_and_autoscalers_target_the_relay() -> None:
    relay = one("StatefulSet", "relay")
    pdb = one("PodDisruptionBudget", "relay")
    assert matches(pdb["spec"]["selector"]["matchLabels"], relay["spec"]["template"]["metadata"]["labels"])
    redis_labels = one("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert not matches(pdb["spec"]["selector"]["matchLabels"], redis_labels)
    cpu = one("HorizontalPodAutoscaler", "relay")
    calls = one("HorizontalPodAutoscaler", "relay", documents(K8S / "hpa-active-calls.example.yaml"))
    for hpa in (cpu, calls):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "StatefulSet", "relay")
        assert hpa["spec"]["maxReplicas"] == cpu["spec"]["maxReplicas"]  # the per-pod routes
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_active_calls_autoscaler_names_the_relay_metric_and_the_adapter_rule() -> None:
    hpa = documents(K8S / "hpa-active-calls.example.yaml")[0]
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert Metrics().registry.get_sample_value(name) is not None  # a gauge of every relay
    block = re.search(r"```yaml\n(rules:.*?)```", K8S_README, re.S)
    assert block, "deploy/k8s/README.md shows no prometheus-adapter rule"
    (rule,) = yaml.safe_load(block.group(1))["rules"]
    assert name in rule["seriesQuery"] and rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


# --- the Ingress: webhooks to any pod, each stream to its own ------------------------------------


def test_ingress_routes_the_webhooks_to_any_ready_pod() -> None:
    settings = manifest_settings()
    host = urlsplit(settings.public_url).hostname
    routed = {path: service for h, path, service, _ in ingress_routes() if h == host}
    app_paths = {r.path for r in create_app(settings).routes if isinstance(r, Route)}
    assert app_paths >= WEBHOOK_PATHS
    for path in WEBHOOK_PATHS | {"/media-stream"}:
        assert routed.get(path) == "relay", path
    assert not {"/metrics", "/health", "/ready", "/calls"} & set(routed)  # inside the cluster only


def test_each_pod_stream_address_is_routed_to_that_pod() -> None:
    routes = {(h, p): (s, ingress) for h, p, s, ingress in ingress_routes()}
    host = urlsplit(config_data()["PUBLIC_URL"]).hostname
    for pod in stream_pod_names():
        url = urlsplit(pod_env(pod)["STREAM_PUBLIC_URL"])
        assert url.scheme == "wss" and url.hostname == host, url
        assert pod in url.path.split("/")  # the pod's name in the path
        service, ingress = routes[(url.hostname, url.path)]
        assert matches(one("Service", service)["spec"]["selector"], pod_labels(pod))
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] in MEDIA_STREAM_PATHS
        assert annotations["nginx.ingress.kubernetes.io/default-backend"] == "relay"  # pod gone


def test_ingress_timeouts_outlast_the_longest_call() -> None:
    longest = float(setting("MAX_CALL_DURATION"))
    for ingress in of_kind("Ingress"):
        annotations = ingress["metadata"]["annotations"]
        for which in ("proxy-read-timeout", "proxy-send-timeout"):
            assert float(annotations[f"nginx.ingress.kubernetes.io/{which}"]) > longest, which
        (tls,) = ingress["spec"]["tls"]
        assert {rule["host"] for rule in ingress["spec"]["rules"]} <= set(tls["hosts"])


# --- the README ----------------------------------------------------------------------------------


def test_readme_names_a_version_the_schemas_cover_and_the_apply_command() -> None:
    version = kubernetes_version()
    assert version in {v.rsplit(".", 1)[0] for v in kubernetes_validate.all_versions()}
    assert f"Kubernetes {version}" in K8S_README
    assert "kubectl apply -k deploy/k8s" in kubernetes_section()
    assert "| `deploy/k8s/` |" in README


def test_readme_figures_are_the_manifests() -> None:
    section = " ".join(kubernetes_section().split())
    guide = " ".join(K8S_README.split())
    hpa = one("HorizontalPodAutoscaler", "relay")["spec"]
    low, high = hpa["minReplicas"], hpa["maxReplicas"]
    assert f"{low} to {high} pods" in section and f"between {low} and {high} pods" in guide
    assert f"relay-0` .. `relay-{high - 1}` for `maxReplicas: {high}`" in guide
    assert f"({hpa['metrics'][0]['resource']['target']['averageUtilization']} % of the one core" in guide
    grace = relay_pod_spec()["terminationGracePeriodSeconds"]
    pause = int(relay_container()["lifecycle"]["preStop"]["exec"]["command"][1])
    drain, api = int(setting("DRAIN_TIMEOUT")), int(setting("TWILIO_API_TIMEOUT"))
    assert f"pauses {pause} s" in section and f"`terminationGracePeriodSeconds` ({grace})" in section
    assert f"`preStop` pause ({pause} s" in guide and f"`DRAIN_TIMEOUT` ({drain} s)" in guide
    assert f"within `TWILIO_API_TIMEOUT` + {END_CALLS_MARGIN_S:g} s ({api + END_CALLS_MARGIN_S:g} s)" in guide
    most = pause + drain + api + END_CALLS_MARGIN_S
    assert f"That is {most:g} s at most; `terminationGracePeriodSeconds` is {grace}" in guide
    assert f"above their sum plus {pause + END_CALLS_MARGIN_S:g} s" in guide
    calls = documents(K8S / "hpa-active-calls.example.yaml")[0]["spec"]["metrics"][0]["pods"]["target"]
    assert f"per pod ({calls['averageValue']} on average)" in guide
    assert f"`MAX_CONCURRENT_CALLS` ({config_data()['MAX_CONCURRENT_CALLS']} in `configmap.yaml`)" in guide
    timeout = one("Ingress", "relay")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-read-timeout"
    ]
    assert f"are {timeout} s, more than the longest call" in guide
    assert f"(`MAX_CALL_DURATION`, {setting('MAX_CALL_DURATION'):g} s)" in guide
    assert f'`worker-shutdown-timeout: "{timeout}s"`' in guide
    redis = one("StatefulSet", "redis")["spec"]
    image = redis["template"]["spec"]["containers"][0]["image"]
    size = redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert f"(`{image}`, append-only file on a {size[:-2]} Gi volume)" in guide
    assert f"`REDIS_URL={secret_data()['REDIS_URL']}`" in guide
    table = {line.split("|")[1].strip() for line in K8S_README.splitlines() if line.startswith("| `")}
    listed = {name.strip(" `") for cell in table for name in cell.split(",")}
    assert listed == {p.name for p in manifest_files()} | {"kustomization.yaml"}
