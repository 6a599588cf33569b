"""The planner's Celery app: JSON only, its own ``planner`` queue.

Task names are the contract with the agents (docs/design.md, Celery wiring): the planner sends
``agent.apply_bundle`` to ``agent.<hostname>`` by name and never imports agent code.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")

app = Celery("portslice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_default_queue="planner",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
)
app.autodiscover_tasks(["planner"])


def agent_queue(hostname: str) -> str:
    return f"agent.{hostname}"


def gateway_queue(datacenter: str) -> str:
    """The queue of a datacenter's gateway (agent/gateway.py consumes it)."""
    return f"gateway.{datacenter}"
