"""Production: `check --deploy` is clean with the documented variables, every
response carries a Content-Security-Policy that the admin, the Swagger UI and the
API pages pass, and gunicorn serves the WSGI app."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from csp.context_processors import nonce
from csp.middleware import CSPMiddleware
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.template import engines
from django.test import Client, RequestFactory

from planner.models import PortSlice
from tests.planner.conftest import Site

ROOT = Path(__file__).resolve().parents[2]

# The README's production example; the test below holds the two to each other.
PRODUCTION_ENV = {
    "DEBUG": "off",
    "ALLOWED_HOSTS": "planner.example.net",
    "SECURE_COOKIES": "on",
    "SECURE_SSL_REDIRECT": "on",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "on",
    "SECURE_HSTS_PRELOAD": "on",
}


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    unset = {"DATABASE_URL", "SECRET_KEY", "DEBUG", "CELERY_BROKER_URL", "ALLOWED_HOSTS"}
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("SECURE_")}
    return {**env, "PORTSLICE_VAR_DIR": str(tmp_path / "var"), **extra}


def test_check_deploy_is_clean_with_the_production_variables(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION_ENV)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stderr


def test_check_deploy_warns_on_the_quick_start_settings(tmp_path: Path) -> None:
    # The same check does find something to say about plain HTTP: it is the
    # variables above that make it clean, not a silenced check.
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "security.W004" in result.stderr


def test_the_readme_documents_the_production_variables() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, value in PRODUCTION_ENV.items():
        assert re.search(rf'{name}="?{re.escape(value)}"?', readme), name
    assert "gunicorn planner.wsgi" in readme


class _Page(HTMLParser):
    """What a page would ask a browser to run or load."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self.handlers: list[str] = []
        self.inline_styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.handlers += [name for name in values if name.startswith("on")]
        # What the page loads or posts to (links a user may follow are not loads).
        loads = {"src", "action"} | ({"href"} if tag == "link" else set())
        self.urls += [v for k, v in values.items() if k in loads and v]
        self.inline_styles += tag == "style" or "style" in values
        if tag == "script" and not values.get("src"):
            self.inline_scripts.append(values)


def _directives(header: str) -> dict[str, list[str]]:
    parts = (part.strip().split() for part in header.split(";") if part.strip())
    return {words[0]: words[1:] for words in parts}


def _assert_passes_policy(response: object, url: str) -> None:
    header = response["Content-Security-Policy"]  # type: ignore[index]
    policy = _directives(header)
    assert policy["script-src"][0] == "'self'" and "'unsafe-inline'" not in policy["script-src"]
    page = _Page()
    page.feed(response.content.decode())  # type: ignore[attr-defined]
    nonces = [v for v in policy["script-src"] if v.startswith("'nonce-")]
    for script in page.inline_scripts:
        runs = script.get("type") not in {"application/json"}
        assert not runs or f"'nonce-{script.get('nonce')}'" in nonces, (url, script)
    assert page.handlers == [], (url, page.handlers)  # no onclick=...: CSP blocks them
    off_site = [u for u in page.urls if u.startswith(("http:", "https:", "//"))]
    assert off_site == [], (url, off_site)
    if page.inline_styles:
        assert "'unsafe-inline'" in policy["style-src"], url


@pytest.fixture
def alice(site: Site) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("alice", password="x-Secret-1"))
    return client


def _pages(site: Site) -> list[tuple[str, dict[str, str]]]:
    slice_ = PortSlice.objects.first()
    assert slice_ is not None
    return [
        ("/admin/", {}),
        ("/admin/planner/machine/", {}),
        (f"/admin/planner/machine/{site.machines[0].pk}/change/", {}),
        ("/admin/planner/portslice/", {}),  # read-only: the list with an inline <style>
        (f"/admin/planner/portslice/{slice_.pk}/change/", {}),
        ("/api/docs/", {}),
        ("/api/v1/datacenters", {"HTTP_ACCEPT": "text/html"}),  # DRF's browsable API
    ]


@pytest.mark.django_db
def test_the_admin_swagger_and_api_pages_pass_the_policy(alice: Client, site: Site) -> None:
    for url, headers in _pages(site):
        response = alice.get(url, **headers)  # type: ignore[arg-type]
        assert response.status_code == 200, url
        _assert_passes_policy(response, url)


@pytest.mark.django_db
def test_swagger_ui_loads_its_start_up_script_from_this_server(alice: Client) -> None:
    page = _Page()
    page.feed(alice.get("/api/docs/").content.decode())
    scripts = [u for u in page.urls if "script" in u]
    assert scripts == ["/api/docs/?script="]
    script = alice.get(scripts[0])
    assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()
    assert script["Content-Type"].startswith("application/javascript")


@pytest.mark.django_db
def test_every_kind_of_response_carries_the_policy(alice: Client, site: Site) -> None:
    for url in ["/admin/login/", "/api/v1/datacenters", "/api/schema/", "/api/v1/nope"]:
        header = Client().get(url)["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in header and "object-src 'none'" in header, url


def test_a_template_can_run_an_inline_script_with_the_nonce(rf: RequestFactory) -> None:
    template = engines["django"].from_string('<script nonce="{{ CSP_NONCE }}">go()</script>')
    middleware = CSPMiddleware(lambda request: HttpResponse())
    request = rf.get("/")
    middleware.process_request(request)
    html = template.render({"CSP_NONCE": nonce(request)["CSP_NONCE"]})
    response = middleware.process_response(request, HttpResponse(html))
    used = re.search(r'nonce="([^"]+)"', html)
    assert used and f"'nonce-{used.group(1)}'" in response["Content-Security-Policy"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_gunicorn_serves_the_wsgi_app(tmp_path: Path) -> None:
    port = _free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "planner.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT,
        env=_clean_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = _get_when_up(f"http://127.0.0.1:{port}/api/schema/?format=json", server)
        assert json.loads(body)["info"]["title"] == "portslice API"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get_when_up(url: str, server: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.headers["Content-Security-Policy"]
                return bytes(response.read())
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stderr = server.stderr.read().decode() if server.stderr else ""
                raise AssertionError(f"gunicorn did not answer: {stderr[-2000:]}") from None
            time.sleep(0.2)


def test_the_readme_lists_every_environment_variable_settings_reads() -> None:
    source = (ROOT / "planner" / "settings.py").read_text()
    read = set(re.findall(r'(?:env\w+|environ\.get)\(\s*"([A-Z][A-Z0-9_]+)"', source))
    assert {"DATABASE_URL", "SECRET_KEY", "SECURE_HSTS_SECONDS"} <= read
    table = (ROOT / "README.md").read_text().split("## Configuration")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table, flags=re.MULTILINE))
    assert read - documented == set(), "add these to the README's configuration table"
