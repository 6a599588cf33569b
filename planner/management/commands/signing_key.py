"""manage.py signing_key generate | rotate | list | retire KID"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.audit import acting_as
from planner.models import ConfigBundle, SigningKey
from planner.services.keys import (
    SigningKeyError,
    signing_key_generate,
    signing_key_retire,
    signing_key_rotate,
)
from planner.signing import private_key_path


class Command(BaseCommand):
    help = "Manage the Ed25519 keys that sign config bundles."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        generate = sub.add_parser("generate", help="make the first key (active)")
        generate.add_argument(
            "--if-missing", action="store_true", help="do nothing when an active key exists"
        )
        sub.add_parser("rotate", help="make a new active key; the old one stays published")
        sub.add_parser("list", help="list keys and their status")
        retire = sub.add_parser("retire", help="remove a published key from the JWKS")
        retire.add_argument("kid")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for key in SigningKey.objects.all():
                where = private_key_path(key.kid)
                self.stdout.write(
                    f"{key.kid}  {key.status:<9}  {key.created_at:%Y-%m-%d %H:%M}  "
                    f"{where if where.exists() else '(no private key file)'}"
                )
            return
        try:
            with acting_as(f"system:signing_key {action}"):
                changed = self._change(action, options)
        except SigningKeyError as error:
            raise CommandError(str(error)) from None
        if changed is not None:
            self.stdout.write(f"{action}: {changed.kid} is {changed.status}")

    def _change(self, action: str, options: dict[str, Any]) -> SigningKey | None:
        if action == "retire":
            return signing_key_retire(kid=options["kid"])
        if (
            action == "generate"
            and options["if_missing"]
            and SigningKey.objects.filter(status="active").exists()
        ):
            return None
        new_key = signing_key_generate() if action == "generate" else signing_key_rotate()
        signed = ConfigBundle.objects.filter(kid=new_key.kid).count()
        self.stdout.write(f"signed {signed} bundles with the new key")
        return new_key
