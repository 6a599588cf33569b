"""Create the first admin account for the quick start, once.

The password is random and written to ``var/admin-password`` (mode 0600); it
is never printed, logged or stored anywhere else.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from planner.audit import acting_as


class Command(BaseCommand):
    help = "Create user 'admin' with a random password in var/admin-password if no admin exists."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        path = settings.VAR_DIR / "admin-password"
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write(f"an admin exists; its first password (if unchanged) is in {path}")
            return
        password = secrets.token_urlsafe(18)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        with acting_as("system:ensure_admin"):
            user_model.objects.create_superuser("admin", password=password)
        self.stdout.write(f"created user 'admin'; password in {path}")
