"""docker-compose.yml: valid for docker-compose, and every command it runs exists here."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

from agent.__main__ import _parser
from agent.config import KEYS as AGENT_KEYS
from agent.gateway import GatewayConfig
from tests.support import need

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PORTSLICE_IMAGE = "portslice:latest"


def _services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def _ours() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if s.get("image") == PORTSLICE_IMAGE}


def _commands(argv: list[str]) -> list[list[str]]:
    """``sh -c "a && b"`` → ``[a, b]``; any other argv as it is."""
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def _agent_subcommands() -> set[str]:
    action = next(a for a in _parser()._actions if a.dest == "command")
    return set(action.choices)  # type: ignore[arg-type]


def _exists(argv: list[str]) -> str | None:
    """Why ``argv`` would not run in the image, or None."""
    argv = argv[1:] if argv[0] == "exec" else argv
    if argv[:3] == ["python", "-m", "agent"]:
        return None if argv[3] in _agent_subcommands() else f"no agent command {argv[3]}"
    if argv[:2] == ["python", "manage.py"]:
        return None if argv[2] in get_commands() else f"no management command {argv[2]}"
    if argv[:3] == ["celery", "-A", "planner"]:
        return None if argv[3] in {"worker", "beat", "inspect"} else f"celery {argv[3]}?"
    if argv[0] == "gunicorn":
        module = argv[1].replace(".", "/") + ".py"
        return None if (ROOT / module).exists() else f"no {module}"
    if argv[0] == "python" and argv[1] == "-c":
        return None
    if argv[0] == "test":
        return None
    return f"unknown command {argv}"


def test_every_service_command_exists_in_the_project() -> None:
    services = _ours()
    assert {"web", "worker", "beat", "gateway", "agent1", "agent2"} <= set(services)
    for name, service in services.items():
        argvs = _commands(service["command"])
        health = service["healthcheck"]["test"]
        if health[0] == "CMD":
            argvs.append(health[1:])
        for argv in argvs:
            assert _exists(argv) is None, (name, argv, _exists(argv))


def test_web_migrates_and_collects_static_before_gunicorn() -> None:
    steps = [argv[:3] for argv in _commands(_services()["web"]["command"])]
    assert steps[0] == ["python", "manage.py", "migrate"]
    assert ["python", "manage.py", "collectstatic"] in steps
    assert steps[-1][:2] == ["exec", "gunicorn"]


def test_the_environment_names_only_settings_that_exist() -> None:
    gateway_keys = {f.name.upper() for f in fields(GatewayConfig)} | {"API_TOKEN_FILE"}
    for name, service in _ours().items():
        for key in service.get("environment", {}):
            if key.startswith("PORTSLICE_AGENT_"):
                assert key.removeprefix("PORTSLICE_AGENT_").lower() in AGENT_KEYS, (name, key)
            if key.startswith("PORTSLICE_GATEWAY_"):
                assert key.removeprefix("PORTSLICE_GATEWAY_") in gateway_keys, (name, key)


def test_no_secret_is_written_in_the_file() -> None:
    for service in _services().values():
        for key, value in service.get("environment", {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), key
    text = COMPOSE.read_text()
    assert "postgres://" not in text.replace("postgres://portslice:%s@", "")


def test_agents_and_the_gateway_get_net_admin_and_healthchecks() -> None:
    services = _services()
    for name in ("gateway", "agent1", "agent2"):
        assert "NET_ADMIN" in services[name]["cap_add"], name
    assert all("healthcheck" in s for s in services.values())


@pytest.mark.parametrize("compose", ["docker-compose"])
def test_docker_compose_accepts_the_file(compose: str) -> None:
    need(shutil.which(compose) is not None, "needs docker-compose (make sysdeps installs it)")
    done = subprocess.run(
        [compose, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_scrapes_web_and_every_agent_with_the_rules_mounted() -> None:
    prometheus = _services()["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: {t for group in job["static_configs"] for t in group["targets"]}
        for name, job in jobs.items()
    }
    assert targets["portslice-planner"] == {"web:8000"}
    agents = {name for name, s in _ours().items() if s["command"][:3] == ["python", "-m", "agent"]}
    agents = {name for name in agents if _ours()[name]["command"][3] == "run"}
    assert targets["portslice-agent"] == {f"{name}:9465" for name in agents}
