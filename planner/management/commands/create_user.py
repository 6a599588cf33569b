"""``manage.py create_user NAME --role viewer|operator|admin``: an account for a person.

The password is random and written to a file of mode 0600 (``--password-file``,
by default ``var/users/NAME-password``); it is never printed or logged. Hand it
over, and the person changes it after logging in (``/admin/password_change/``
for admins, or ``manage.py changepassword NAME``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.audit import acting_as
from planner.services.users import ROLES, user_create


class Command(BaseCommand):
    help = "Create a user with a role (viewer, operator, admin); a random password in a file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument(
            "--password-file", type=Path, help="where to write the password (default var/users/)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        path: Path = options["password_file"] or settings.VAR_DIR / "users" / f"{username}-password"
        password = secrets.token_urlsafe(18)
        # The file first (never overwritten), the user after: a user nobody knows the
        # password of is never left behind, nor a file for a user that was refused.
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(f"--password-file: {str(path)!r} exists; choose another") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        try:
            with acting_as("system:create_user"):
                user_create(username=username, role=options["role"], password=password)
        except ValidationError as error:
            path.unlink()
            raise CommandError("; ".join(_messages(error))) from None
        self.stdout.write(f"created {options['role']} {username!r}; password in {path}")


def _messages(error: ValidationError) -> list[str]:
    if hasattr(error, "error_dict"):
        return [f"{field}: {m}" if not m.startswith(f"{field}:") else m
                for field, messages in error.message_dict.items() for m in messages]  # fmt: skip
    return list(error.messages)
