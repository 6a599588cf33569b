from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.inventory_io import render_geofeed
from planner.models import Datacenter
from planner.selectors import geofeed_entries


class Command(BaseCommand):
    help = "Write the egress IPs as an RFC 8805 geofeed (CSV) to standard output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--datacenter", default=None, help="only this datacenter's IPs")

    def handle(self, *args: Any, **options: Any) -> None:
        code = options["datacenter"]
        if code and not Datacenter.objects.filter(code=code).exists():
            raise CommandError(f"--datacenter: no datacenter with code {code!r}")
        feed = render_geofeed(
            geofeed_entries(datacenter=code), comment="portslice egress geofeed (RFC 8805)"
        )
        self.stdout.write(feed, ending="")
