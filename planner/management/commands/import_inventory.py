from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from planner.audit import acting_as
from planner.inventory_io import (
    MAX_RECORDS,
    PREFIX_ADDRESSES,
    InventoryError,
    parse_inventory,
)
from planner.services.inventory import inventory_import
from planner.services.locks import Conflict


class Command(BaseCommand):
    help = (
        "Import datacenters, pools, egress IPs and machines from JSON, CSV or an "
        "RFC 8805 geofeed. One bad row and nothing is imported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--format",
            default="auto",
            choices=["auto", "json", "ips-csv", "machines-csv", "geofeed"],
        )
        parser.add_argument("--datacenter", default="", help="geofeed only: datacenter code")
        parser.add_argument("--purpose", default="", help="geofeed only: pool purpose")
        parser.add_argument(
            "--large-prefixes",
            action="store_true",
            help=(
                f"geofeed only: let a prefix stand for up to {MAX_RECORDS:,} addresses "
                f"(default at most {PREFIX_ADDRESSES})"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CommandError(f"{path}: {error.strerror}") from None
        try:
            records = parse_inventory(
                text,
                fmt=options["format"],
                datacenter=options["datacenter"],
                purpose=options["purpose"],
                large_prefixes=options["large_prefixes"],
            )
            with acting_as("system:import_inventory"):
                counts = inventory_import(records=records)
        except (InventoryError, Conflict) as error:
            raise CommandError(f"{path}: {error}; nothing was imported") from None
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        self.stdout.write(f"imported {summary or 'nothing'} from {path}")
