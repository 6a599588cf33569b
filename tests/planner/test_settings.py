"""Settings come from the environment; secrets from env or files, never from git."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from planner.settings import envbool, envint, envsecret
from tests.support import need_redis

ROOT = Path(__file__).resolve().parents[2]


def test_envbool_reads_the_usual_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAG", "yes")
    assert envbool("FLAG") is True
    monkeypatch.setenv("FLAG", "off")
    assert envbool("FLAG") is False
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ValueError, match="FLAG.*'maybe'"):
        envbool("FLAG")


def test_envint_names_the_variable_on_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNT", "12")
    assert envint("COUNT", 1) == 12
    monkeypatch.setenv("COUNT", "twelve")
    with pytest.raises(ValueError, match="COUNT.*'twelve'"):
        envint("COUNT", 1)


def test_envsecret_reads_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cret\n")
    monkeypatch.delenv("TOKEN", raising=False)
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "key"))
    assert envsecret("TOKEN") == "s3cret"


def _settings_in_subprocess(env: dict[str, str], expression: str) -> str:
    code = (
        f"import django, os; django.setup(); from django.conf import settings; print({expression})"
    )
    unset = {"DATABASE_URL", "SECRET_KEY", "DEBUG", "CELERY_BROKER_URL", "CACHE_URL"}
    base = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "planner.settings", **env},
    )
    return result.stdout.strip()


def test_quick_start_defaults(tmp_path: Path) -> None:
    out = _settings_in_subprocess(
        {"PORTSLICE_VAR_DIR": str(tmp_path)},
        "settings.DATABASES['default']['ENGINE'], settings.DEBUG, settings.CELERY_BROKER_URL",
    )
    assert out == "django.db.backends.sqlite3 False filesystem://"
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = _settings_in_subprocess({"PORTSLICE_VAR_DIR": str(tmp_path)}, "settings.SECRET_KEY")
    assert again == key_file.read_text().strip()


def test_production_settings_from_the_environment(tmp_path: Path) -> None:
    out = _settings_in_subprocess(
        {
            "PORTSLICE_VAR_DIR": str(tmp_path),
            "DATABASE_URL": "postgres://u@db.internal:5432/portslice",
            "SECRET_KEY": "from-env",
            "CELERY_BROKER_URL": "redis://redis:6379/0",
            "ALLOWED_HOSTS": "planner.example.net",
        },
        "settings.DATABASES['default']['NAME'], settings.SECRET_KEY, "
        "settings.CELERY_BROKER_URL, settings.ALLOWED_HOSTS",
    )
    assert out == "portslice from-env redis://redis:6379/0 ['planner.example.net']"
    assert not (tmp_path / "secret_key").exists()


def test_var_is_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "var/secret_key"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0


def test_the_quick_start_broker_keeps_its_state_under_the_var_dir(tmp_path: Path) -> None:
    # A process started elsewhere (a worker, beat, a shell) sends a task on the
    # filesystem:// broker: messages and exchange tables land under
    # PORTSLICE_VAR_DIR, nothing in the directory it started in.
    cwd, var = tmp_path / "elsewhere", tmp_path / "var"
    cwd.mkdir()
    code = (
        "import django; django.setup(); from planner.celery import app; "
        "app.send_task('planner.reconcile', queue='planner'); "
        "app.send_task('agent.apply_bundle', args=['t'], queue='agent.m1.example.net')"
    )
    unset = {"DATABASE_URL", "SECRET_KEY", "DEBUG", "CELERY_BROKER_URL", "CACHE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        DJANGO_SETTINGS_MODULE="planner.settings", PORTSLICE_VAR_DIR=str(var), PYTHONPATH=str(ROOT)
    )
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, timeout=60)
    assert list(cwd.iterdir()) == []
    assert len(list((var / "broker").glob("*.msg"))) == 2
    tables = sorted(p.name for p in (var / "broker-control").iterdir())
    assert tables == ["agent.m1.example.net.exchange", "planner.exchange"]


def test_it_shares_one_cache_from_cache_url_and_names_a_bad_one() -> None:
    from planner.settings import cache_backend

    assert cache_backend("redis://redis:6379/1") == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://redis:6379/1",
    }
    assert cache_backend("locmem://")["BACKEND"].endswith("LocMemCache")
    with pytest.raises(ValueError, match="CACHE_URL='memcached://x'"):
        cache_backend("memcached://x")


def test_it_shares_the_cache_between_web_processes_on_redis() -> None:
    need_redis()
    key = f"portslice-test-shared-{uuid.uuid4().hex}"
    env = {"CACHE_URL": "redis://127.0.0.1:6379/0"}
    cache = "__import__('django.core.cache').core.cache.cache"
    try:
        _settings_in_subprocess(env, f"{cache}.set({key!r}, 'seen', 60)")
        assert _settings_in_subprocess(env, f"{cache}.get({key!r})") == "seen"
    finally:
        _settings_in_subprocess(env, f"{cache}.delete({key!r})")
