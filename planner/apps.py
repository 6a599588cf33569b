from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class PlannerConfig(AppConfig):
    name = "planner"
    verbose_name = "portslice planner"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from planner.audit import connect_audit_signals

        connect_audit_signals()
        post_migrate.connect(_restore_plan_triggers, sender=self)


def _restore_plan_triggers(*, using: str = "default", **kwargs: Any) -> None:
    from planner.plan_triggers import restore_sqlite_triggers

    restore_sqlite_triggers(connections[using])
