"""The agent's Celery side: consume ``agent.<hostname>``, answer on ``planner`` (docs/design.md).

``python -m agent run`` starts one Celery worker (solo pool: one task at a
time, in the main thread, no child processes — bundles must be applied in
order, nftables and the state file have one writer, and a fork-based pool would
only add processes that can die holding a half-applied bundle) consuming only
the queue ``agent.<hostname>``. JSON is the only serializer accepted, and no
result backend is used: answers go back as tasks sent *by name* to the
``planner`` queue. The broker is an untrusted transport; the bundle's
signature is what the agent trusts.

Task contract
=============

The names, queues and fields below live in :mod:`contract` (no Django), which
both sides import: the agent builds its messages with ``contract.ack_message``
and ``contract.usage_message``, and the planner checks every message it takes
off the broker with ``contract.validate_ack`` / ``validate_usage``, dropping
(and counting) any that breaks the bounds.

``agent.apply_bundle(token)`` (planner → agent, queue ``agent.<hostname>``)
    ``token``: the signed bundle, a JWS compact string (docs/design.md). Applying the
    serial already applied is a no-op that is acked again.

``planner.record_ack(**kwargs)`` (agent → planner, queue ``planner``), one per
``agent.apply_bundle``; every key is always present:

    ============== ============ ==============================================================
    hostname       str          this host (the bundle's ``sub``)
    serial         int | None   the bundle's serial; for a rejection the serial the token
                                *claims* (unverified; ``None`` if unreadable)
    status         str          ``"applied"``, ``"rejected"`` (verification failed) or
                                ``"failed"`` (verified, but not persisted or not enforced)
    reason         str          ``""`` when applied; a rejection reason of
                                :data:`agent.bundle.REASONS` (``bad_signature``,
                                ``stale_serial``, ...); ``"enforcement_failed"`` or
                                ``"persist_failed"`` when failed
    detail         str          human-readable explanation (``""`` when applied)
    note           str          ``"duplicate"`` when the serial was already applied, else ``""``
    applied_serial int | None   the serial this host enforces after this message
    revision       int | None   the bundle's plan revision (``None`` when rejected)
    applied_at     str          ISO 8601 UTC time of the apply (``""`` unless applied)
    enforcement    dict         ``{"serial": int, "port_range": {"state", "detail"},
                                "nftables": {"state", "detail"}, "addresses": {"state",
                                "detail"}, "missing_addresses": [str]}`` with state
                                ``"on"``, ``"off"`` or ``"failed"``; ``{}`` before any bundle
    ============== ============ ==============================================================

``planner.record_usage(**kwargs)`` (agent → planner, queue ``planner``), every
``usage_interval`` seconds while a bundle is applied:

    ========= ============ =================================================================
    hostname  str          this host
    serial    int          the applied bundle's serial
    at        float        Unix time of the measurement
    slices    list[dict]   one per live slice (active and draining):
                           ``{"ip": str, "lo": int, "hi": int, "tcp": int, "udp": int,
                           "buckets": {"<bucket_lo>": int}}``; ``tcp`` counts ESTABLISHED
                           sockets, ``udp`` connected ones; ``buckets`` counts both per
                           64-port bucket aligned on absolute port numbers
                           (``bucket_lo = port // 64 * 64``, a decimal string key) and
                           lists only non-empty buckets
    ========= ============ =================================================================

Acks are published with a short retry; a lost ack is repaired by the
planner's ``planner.reconcile``, which resends the bundle (acked as duplicate).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import contract
from agent.bundle import load_keys
from agent.config import AgentConfig
from agent.egress import Egress
from agent.fdpass import FdPassServer
from agent.metrics import AgentMetrics
from agent.service import Agent
from agent.usage import UsageReporter
from contract.broker import filesystem_options, filesystem_transport

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

APPLY_TASK: Final = contract.APPLY_TASK
ACK_TASK: Final = contract.ACK_TASK
USAGE_TASK: Final = contract.USAGE_TASK
PLANNER_QUEUE: Final = contract.PLANNER_QUEUE
#: Celery reads these before its own configuration; the agent's config must win.
CELERY_OVERRIDES: Final = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)
ACK_RETRY: Final = {"max_retries": 3, "interval_start": 0.5, "interval_step": 1.0}


def make_app(config: AgentConfig) -> Celery:
    """A Celery app for this host: JSON only, no results, ``agent.<hostname>`` as its queue."""
    return celery_app(
        "portslice-agent",
        broker_url=config.broker_url,
        queue=config.queue,
        broker_folder=config.broker_folder or config.state_dir / "broker",
    )


def celery_app(
    name: str, *, broker_url: str, queue: str, broker_folder: Path | None = None
) -> Celery:
    """A Celery app consuming only ``queue`` in order: JSON only, no results, solo pool.

    With ``filesystem://`` the messages pass through ``broker_folder`` (required:
    kombu's default is ``./data_in``/``./control`` in whatever directory the
    process started in), created if missing.
    """
    # Imported here, not at the top: kombu's JSON module imports Django's
    # Promise when Django happens to be installed (as on a planner machine), and
    # importing any agent module must never load Django (tests/test_package_boundaries.py).
    from celery import Celery
    from kombu import Queue

    app = Celery(name, broker=broker_url, set_as_current=False)
    if broker_url.startswith("filesystem"):
        if broker_folder is None:
            raise ValueError(f"broker_url={broker_url!r} needs a broker folder")
        options = filesystem_options(broker_folder)
        for folder in {options["data_folder_in"], options["control_folder"]}:
            Path(folder).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport = filesystem_transport()
        app.conf.broker_transport_options = options
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=queue,
        task_queues=[Queue(queue)],
        task_acks_late=True,  # a crash mid-apply redelivers; applying is idempotent
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # fail static: keep trying, keep enforcing
        worker_hijack_root_logger=True,
        enable_utc=True,
    )
    return app


def ignore_celery_environment() -> None:
    """Drop ``CELERY_BROKER_URL`` and friends: ``broker_url`` is the agent's only broker setting.

    Celery lets those variables override the app's broker, so one left in a
    service's environment would silently point the agent elsewhere.
    """
    for name in CELERY_OVERRIDES:
        if os.environ.pop(name, None) is not None:
            log.warning("ignoring $%s: the agent's broker is broker_url in its config", name)


def send_ack(app: Celery, kwargs: dict[str, Any]) -> None:
    app.send_task(ACK_TASK, kwargs=kwargs, queue=PLANNER_QUEUE, retry=True, retry_policy=ACK_RETRY)


def send_usage(app: Celery, kwargs: dict[str, Any]) -> None:
    # No retry: the next round carries fresher numbers.
    app.send_task(USAGE_TASK, kwargs=kwargs, queue=PLANNER_QUEUE, retry=False)


def register_tasks(app: Celery, agent: Agent) -> None:
    @app.task(name=APPLY_TASK, ignore_result=True)
    def apply_bundle(token: str) -> None:
        ack = agent.apply(token)
        try:
            send_ack(app, ack.as_kwargs())
        except Exception as error:  # the transport's errors vary; planner.reconcile resends
            log.error("ack for serial %s not sent: %s", ack.serial, error)


def run(config: AgentConfig, *, loglevel: str = "INFO") -> int:
    """Start everything ``python -m agent run`` runs; returns the exit code."""
    ignore_celery_environment()
    keys = load_keys(config.keys_path)
    agent = Agent(config, keys)
    metrics = AgentMetrics(current=lambda: agent.bundle)
    agent.observer = metrics
    if config.metrics_address is not None:
        metrics.serve(config.metrics_address)
    startup = agent.start()  # before the broker: fail static
    if startup.problem:
        log.warning("startup: %s", startup.problem)

    app = make_app(config)
    register_tasks(app, agent)
    fdpass = FdPassServer(config.socket_path, lambda: Egress(agent.bundle), mode=config.socket_mode)
    fdpass.start()
    reporter = UsageReporter(
        hostname=config.hostname,
        current=lambda: agent.bundle,
        send=lambda kwargs: send_usage(app, kwargs),
        interval=config.usage_interval,
        observer=metrics,
    )
    reporter.start()
    try:
        worker = app.Worker(
            hostname=f"agent@{config.hostname}",
            queues=[config.queue],
            pool="solo",
            concurrency=1,
            loglevel=loglevel,
            without_gossip=True,
            without_mingle=True,
        )
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        reporter.stop()
        fdpass.close()
