"""``manage.py create_user``: a viewer, an operator or an admin, with a password only in a
file of mode 0600; bad input names the field and the value and writes nothing."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory

from planner.api.permissions import user_rank

pytestmark = pytest.mark.django_db


def _create(tmp_path: Path, name: str, role: str) -> tuple[str, str]:
    out = io.StringIO()
    path = tmp_path / f"{name}.pw"
    call_command("create_user", name, "--role", role, "--password-file", str(path), stdout=out)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert password not in out.getvalue() and str(path) in out.getvalue()
    return password, out.getvalue()


@pytest.mark.parametrize(("role", "rank"), [("viewer", 1), ("operator", 2), ("admin", 3)])
def test_it_creates_a_user_with_the_role_who_can_log_in(
    tmp_path: Path, role: str, rank: int
) -> None:
    password, _ = _create(tmp_path, f"pat-{role}", role)
    user = authenticate(RequestFactory().post("/login/"), username=f"pat-{role}", password=password)
    assert user is not None and user_rank(user) == rank
    client = Client()
    assert client.login(
        request=RequestFactory().post("/login/"), username=f"pat-{role}", password=password
    )
    assert client.get("/").status_code == 200  # every role reads the overview


def test_it_writes_the_password_under_var_by_default(settings: object, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path  # type: ignore[attr-defined]
    call_command("create_user", "vic", "--role", "viewer", stdout=io.StringIO())
    password = (tmp_path / "users" / "vic-password").read_text().strip()
    login = RequestFactory().post("/login/")  # django-axes counts failures per address
    assert authenticate(login, username="vic", password=password) is not None


def test_a_taken_username_is_refused_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    _create(tmp_path, "sam", "viewer")
    path = tmp_path / "again.pw"
    with pytest.raises(CommandError, match="username: a user named 'sam' exists already"):
        call_command("create_user", "sam", "--role", "operator", "--password-file", str(path))
    assert not path.exists()
    assert user_rank(get_user_model().objects.get(username="sam")) == 1


def test_a_bad_username_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "x.pw"
    with pytest.raises(CommandError, match="username: "):
        call_command("create_user", "no spaces", "--role", "viewer", "--password-file", str(path))
    assert not path.exists() and not get_user_model().objects.exists()


def test_an_unknown_role_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="invalid choice: 'root'"):
        call_command("create_user", "x", "--role", "root")


def test_an_existing_password_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kept.pw"
    path.write_text("keep me\n")
    with pytest.raises(CommandError, match="--password-file: .* exists"):
        call_command("create_user", "kim", "--role", "viewer", "--password-file", str(path))
    assert path.read_text() == "keep me\n" and not get_user_model().objects.exists()
