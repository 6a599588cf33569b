"""manage.py api_token create NAME --kind user|agent|lb [--user U | --machine H | --datacenter C]

Prints the key once; only its SHA-256 is stored.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.audit import acting_as
from planner.choices import TokenKind
from planner.models import ApiToken, Datacenter, Machine
from planner.services.tokens import api_token_create, api_token_revoke


class Command(BaseCommand):
    help = "Create, list or revoke API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("name")
        create.add_argument("--kind", choices=TokenKind.values, required=True)
        create.add_argument("--user", help="user tokens: the user it acts as")
        create.add_argument("--machine", help="agent tokens: the machine's hostname")
        create.add_argument("--datacenter", help="lb tokens: limit to one datacenter")
        sub.add_parser("list")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for token in ApiToken.objects.select_related("user", "machine", "datacenter"):
                bound = token.user or token.machine or token.datacenter or "-"
                self.stdout.write(
                    f"{token.pk:>4} {token.kind:<6} {token.name:<24} {bound} "
                    f"{'revoked' if token.revoked else ''}"
                )
            return
        with acting_as("system:api_token"):
            if action == "revoke":
                found = ApiToken.objects.filter(pk=options["id"]).first()
                if found is None:
                    raise CommandError(f"id: no token {options['id']}")
                api_token_revoke(token=found)
                self.stdout.write(f"revoked token {found.pk}")
                return
            self._create(options)

    def _create(self, options: dict[str, Any]) -> None:
        bindings: dict[str, tuple[Any, str, str | None]] = {
            "user": (get_user_model(), "username", options["user"]),
            "machine": (Machine, "hostname", options["machine"]),
            "datacenter": (Datacenter, "code", options["datacenter"]),
        }
        found: dict[str, Any] = {}
        for name, (model, field, value) in bindings.items():
            if value:
                found[name] = model._default_manager.filter(**{field: value}).first()
                if found[name] is None:
                    raise CommandError(f"--{name}: no {name} {value!r}")
        try:
            token, key = api_token_create(name=options["name"], kind=options["kind"], **found)
        except ValidationError as error:
            raise CommandError(f"{options['kind']} token: {' '.join(error.messages)}") from None
        self.stdout.write(f"token {token.pk} ({token.kind}): {key}")
        self.stdout.write("store it now: only its hash is kept")
