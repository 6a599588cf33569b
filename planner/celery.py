"""The planner's Celery app: JSON only, its own ``planner`` queue.

Task names are the contract with the agents (docs/design.md, Celery wiring): the planner sends
``agent.apply_bundle`` to ``agent.<hostname>`` by name and never imports agent code.
"""

from __future__ import annotations

import os

from celery import Celery

import contract

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "planner.settings")

app = Celery("portslice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_default_queue=contract.PLANNER_QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
)
app.autodiscover_tasks(["planner"])

agent_queue = contract.agent_queue
gateway_queue = contract.gateway_queue
