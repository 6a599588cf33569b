"""manage.py gateway register NAME --datacenter CODE | unregister NAME | list

A gateway's acks are recorded only once an admin has registered it, under the
name it sends (``PORTSLICE_GATEWAY_NAME``) and for its datacenter.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.audit import acting_as
from planner.models import Datacenter, Gateway
from planner.services.steering import gateway_register, gateway_unregister


class Command(BaseCommand):
    help = "Register, list or unregister the gateways whose acks the planner records."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        register = sub.add_parser("register")
        register.add_argument("name")
        register.add_argument("--datacenter", required=True)
        unregister = sub.add_parser("unregister")
        unregister.add_argument("name")
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for gateway in Gateway.objects.select_related("datacenter"):
                self.stdout.write(
                    f"{gateway.name:<32} {gateway.datacenter.code:<8} r{gateway.revision} "
                    f"{gateway.status or '-'} last seen {gateway.last_seen or 'never'}"
                )
            return
        with acting_as("system:gateway"):
            if action == "unregister":
                found = Gateway.objects.filter(name=options["name"]).first()
                if found is None:
                    raise CommandError(f"name: no gateway {options['name']!r}")
                gateway_unregister(gateway=found)
                self.stdout.write(f"unregistered gateway {found.name}")
                return
            datacenter = Datacenter.objects.filter(code=options["datacenter"]).first()
            if datacenter is None:
                raise CommandError(f"--datacenter: no datacenter {options['datacenter']!r}")
            try:
                gateway = gateway_register(name=options["name"], datacenter=datacenter)
            except ValidationError as error:
                raise CommandError(f"gateway: {' '.join(error.messages)}") from None
            self.stdout.write(f"registered gateway {gateway.name} in {datacenter.code}")
