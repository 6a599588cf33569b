from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.test import RequestFactory

pytestmark = pytest.mark.django_db


def test_it_creates_one_admin_with_a_password_only_in_var(settings: object, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path  # type: ignore[attr-defined]
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    password = (tmp_path / "admin-password").read_text().strip()
    assert stat.S_IMODE((tmp_path / "admin-password").stat().st_mode) == 0o600
    assert password not in out.getvalue()
    # A login always has its request: django-axes counts failures per address.
    login = RequestFactory().post("/login/")
    assert authenticate(login, username="admin", password=password) is not None
    call_command("ensure_admin", stdout=io.StringIO())
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
