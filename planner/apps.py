from django.apps import AppConfig


class PlannerConfig(AppConfig):
    name = "planner"
    verbose_name = "portslice planner"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from planner.audit import connect_audit_signals

        connect_audit_signals()
