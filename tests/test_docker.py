"""Dockerfile, docker-compose.yml (and its observability profile, deploy/prometheus.yml and
deploy/compose.traces.yml) and .dockerignore, checked without Docker: the essentials parsed from the
files, and the two commands the image runs on its own (the dependency list it extracts from
pyproject.toml, the HEALTHCHECK) executed here, as is Prometheus's scrape of a running relay."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.testing.server import bind_free_port

ROOT = Path(__file__).resolve().parent.parent


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    return steps[starts[-1] :]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


DOCKERFILE = instructions(ROOT / "Dockerfile")


def test_dockerfile_base_user_port_and_command() -> None:
    froms = [a.split()[0] for k, a in DOCKERFILE if k == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    final = final_stage(DOCKERFILE)
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:")), users
    assert ("EXPOSE", "8000") in final
    cmd = [a for k, a in final if k == "CMD"]
    assert exec_form(cmd[-1]) == ["relay", "serve"]


def test_dockerfile_installs_with_constraints() -> None:
    runs = " ".join(a for k, a in DOCKERFILE if k == "RUN")
    installs = re.findall(r"pip install[^&;]*", runs)
    assert installs and all("-c constraints.txt" in i for i in installs), installs


def test_healthcheck_uses_python_on_health() -> None:
    final = final_stage(DOCKERFILE)
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(health) == 1
    args = health[0]
    assert "/health" in args and "urllib" in args and "curl" not in args
    command = exec_form(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python"


def healthcheck_command() -> list[str]:
    args = next(a for k, a in final_stage(DOCKERFILE) if k == "HEALTHCHECK")
    return [sys.executable, *exec_form(args[args.index("CMD") + 3 :].strip())[1:]]


async def run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_command_passes_on_the_relay_and_fails_without_it(relay_url: str) -> None:
    port = relay_url.rsplit(":", 1)[1]
    code, out = await run(healthcheck_command(), env={"PORT": port})
    assert code == 0, out
    sock = bind_free_port()
    closed = str(sock.getsockname()[1])
    sock.close()
    code, _ = await run(healthcheck_command(), env={"PORT": closed})
    assert code != 0


async def test_dependency_extraction_lists_pyproject_dependencies() -> None:
    step = next(a for k, a in DOCKERFILE if k == "RUN" and "tomllib" in a)
    script = re.search(r'python -c "(.+?)"\s*>', step)
    assert script is not None, step
    code, out = await run([sys.executable, "-c", script.group(1)])  # sh passes the \n inside "…" as is
    assert code == 0, out
    names = [re.split(r"[<>=;\[ ]", line)[0] for line in out.splitlines()]
    assert {"starlette", "uvicorn", "websockets", "twilio", "redis"} <= set(names), names


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git"} <= ignored


COMPOSE = (ROOT / "docker-compose.yml").read_text()


def test_compose_lines_have_redis_and_redis_url() -> None:
    assert re.search(r"^\s{2}redis:\s*$", COMPOSE, re.M)
    assert re.search(r"^\s+image:\s*redis:7", COMPOSE, re.M)
    assert re.search(r"REDIS_URL:\s*redis://redis:6379", COMPOSE)
    assert re.search(r"^\s+env_file:\s*\.env\s*$", COMPOSE, re.M)
    assert '"8000:8000"' in COMPOSE


def test_compose_structure() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(COMPOSE)
    services = doc["services"]
    relay, redis = services["relay"], services["redis"]
    assert redis["image"].startswith("redis:7")
    assert relay["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert relay["env_file"] == ".env" and "8000:8000" in relay["ports"]
    assert relay["build"] == "." and "redis" in relay["depends_on"]


# --- the observability profile (Prometheus, Grafana, Jaeger) and the traces override -------------

OBSERVABILITY = {"prometheus", "grafana", "jaeger"}


def compose_doc(path: Path = ROOT / "docker-compose.yml") -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def test_observability_profile_adds_its_services_only_with_the_profile() -> None:
    services = compose_doc()["services"]
    assert {name for name, s in services.items() if "observability" in s.get("profiles", [])} == OBSERVABILITY
    assert (
        "profiles" not in services["relay"] and "profiles" not in services["redis"]
    )  # `up` alone: unchanged
    for name in OBSERVABILITY:
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image  # pinned
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in services["relay"]["environment"]


def test_observability_ports_and_volumes() -> None:
    doc = compose_doc()
    services = doc["services"]
    assert services["prometheus"]["ports"] == ["9090:9090"]
    assert services["grafana"]["ports"] == ["3000:3000"]
    assert set(services["jaeger"]["ports"]) == {"4318:4318", "16686:16686"}  # OTLP/HTTP in, the UI
    for name in OBSERVABILITY:
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
            else:
                assert source in doc["volumes"], volume
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"  # its default config


def test_traces_override_points_the_relay_at_jaeger() -> None:
    override = compose_doc(ROOT / "deploy" / "compose.traces.yml")
    otlp_port = next(
        p.split(":")[1] for p in compose_doc()["services"]["jaeger"]["ports"] if p.startswith("4318")
    )
    environment = override["services"]["relay"]["environment"]
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://jaeger:{otlp_port}"
    assert set(override["services"]) == {"relay"}


def scrape_target() -> tuple[str, str]:
    """(host:port, path) of the relay job in deploy/prometheus.yml."""
    config = compose_doc(ROOT / "deploy" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "relay"]
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    return target, job.get("metrics_path", "/metrics")


def test_prometheus_scrapes_the_relay_service_port() -> None:
    relay = compose_doc()["services"]["relay"]
    container_port = relay["ports"][0].rsplit(":", 1)[1]
    assert relay["environment"]["PORT"] == container_port
    target, _ = scrape_target()
    assert target == f"relay:{container_port}"


async def test_prometheus_scrape_path_serves_the_relay_metrics(relay_url: str) -> None:
    _, path = scrape_target()
    async with httpx.AsyncClient(base_url=relay_url) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert "# TYPE relay_active_calls gauge" in response.text
    assert response.headers["content-type"].startswith("text/plain")
