"""manage.py plan CODE [--full] [--apply [--digest HEX]] [--json]: preview a datacenter's plan,
or apply it.

It plans the pools an inventory change or an ended drain left dirty; ``--full``
plans every pool of the datacenter.

``--apply`` writes exactly the plan just shown; with ``--digest`` (the
``inputs_digest`` of an earlier preview, e.g. from ``--json``) it writes only if
nothing changed since that preview, and says so otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import allocator as alloc
from planner.audit import acting_as
from planner.models import Datacenter
from planner.services.plans import PlanConflict, PlanPreview, plan_apply, plan_preview


class Command(BaseCommand):
    help = "Show the diff and capacity a new plan for a datacenter would give; --apply writes it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("datacenter", help="datacenter code, e.g. fra1")
        parser.add_argument("--apply", action="store_true", help="write the plan")
        parser.add_argument(
            "--full", action="store_true", help="plan every pool, not only the changed ones"
        )
        parser.add_argument(
            "--digest", help="apply only if the inputs still match this earlier preview"
        )
        parser.add_argument("--reason", default="manage.py plan")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        code = options["datacenter"]
        datacenter = Datacenter.objects.filter(code=code).first()
        if datacenter is None:
            raise CommandError(f"datacenter: no datacenter with code {code!r}")
        preview = plan_preview(datacenter=datacenter, full=options["full"])
        self._show(preview, as_json=options["json"])
        if not preview.ok:
            raise CommandError(f"{code}: not enough IPs; nothing applied")
        if options["apply"]:
            try:
                with acting_as("system:manage.py plan"):
                    revision = plan_apply(
                        datacenter=datacenter,
                        inputs_digest=options["digest"] or preview.inputs_digest,
                        reason=options["reason"],
                        full=options["full"],
                    )
            except (PlanConflict, alloc.CapacityError) as error:
                raise CommandError(f"{code}: {error}") from None
            if not options["json"]:
                self.stdout.write(f"applied {code} revision {revision.number}")

    def _show(self, preview: PlanPreview, *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(preview.as_dict(), indent=2))
            return
        self.stdout.write(
            f"datacenter {preview.datacenter}, based on revision {preview.base_revision}, "
            f"inputs digest {preview.inputs_digest}"
        )
        scope = "every pool" if preview.full else f"{len(preview.scope)} changed pool(s)"
        self.stdout.write(f"  planned: {scope}")
        if preview.plan is None:
            for shortfall in preview.shortfalls:
                self.stdout.write(f"  SHORT {shortfall}")
            return
        summary = preview.plan.diff.summary()
        self.stdout.write("  diff: " + ", ".join(f"{n} {kind}" for kind, n in summary.items()))
        self.stdout.write(f"  {'pool':<44} {'ips':>4} {'slots':>6} {'free':>6} {'machines':>8}")
        for pool, cap in sorted(preview.plan.capacity.items()):
            self.stdout.write(
                f"  {pool:<44} {cap.ips:>4} {cap.slots_total:>6} "
                f"{cap.slots_free:>6} {cap.machines_served:>8}"
            )
