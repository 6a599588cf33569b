"""The portslice gateway: steer return traffic to the host that owns each port.

``python -m agent gateway --datacenter fra1`` runs on a Linux box in front of a
datacenter's hosts (where a load balancer would be). It keeps the kernel's
steering equal to the planner's latest steering table, as
:mod:`allocator.steering` renders it: stable marks, one nft transaction,
idempotent policy routing, ICMP errors steered by the quoted port, forwarding
on and ``rp_filter`` off. The same script is what ``?format=nft`` exports.

Two ways a table arrives, one path to apply it:

* **Push** — the planner publishes ``gateway.apply_steering(token)`` on the
  Celery queue ``gateway.<datacenter>`` after each applied plan. ``token`` is a
  JWS signed with the planner's bundle key (aud ``portslice-gateway``, sub the
  datacenter, claims ``revision``, ``etag``, ``steering``: the API's JSON
  document); the broker is untrusted, the signature is checked against the
  same trusted keys the agents use.
* **Poll** — every ``poll_interval`` seconds a conditional GET of
  ``/api/v1/datacenters/<code>/steering`` with the load-balancer token and
  ``If-None-Match``: a lost message, a broker outage or a gateway started late
  all converge within one interval.

A table is applied when it is new (another ETag) and not older than the one
applied (a revision number below it is a late message). After applying, the
gateway stores the table (``state_dir/gateway.json``, so a restart re-applies
it before anything else: fail static) and acks ``planner.record_gateway_ack``
on the ``planner`` queue with the revision and ETag, so the planner shows
which gateway runs which revision.

Django-free: only :mod:`allocator` and the agent's own modules.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from joserfc.jwk import OKPKey

import contract
from agent.bundle import ISSUER, BundleRejected, load_keys, signed_claims
from agent.service import read_status, write_status
from allocator.steering import SteeringError, render_script, rows_from_document

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

APPLY_TASK: Final = contract.GATEWAY_APPLY_TASK
ACK_TASK: Final = contract.GATEWAY_ACK_TASK
PLANNER_QUEUE: Final = contract.PLANNER_QUEUE
AUDIENCE: Final = contract.GATEWAY_AUDIENCE
STATE_FILE: Final = "gateway.json"
#: Steering tokens carry every live slice: 100,000 slices are about 10 MB.
MAX_TOKEN_BYTES: Final = 64 << 20
SCRIPT_TIMEOUT: Final = 300.0
HTTP_TIMEOUT: Final = 30.0
ENV_PREFIX: Final = "PORTSLICE_GATEWAY_"


queue_name = contract.gateway_queue


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs; from ``PORTSLICE_GATEWAY_<KEY>`` and the command line."""

    datacenter: str
    name: str
    broker_url: str = ""
    keys_path: Path = Path("/etc/portslice/planner-keys.json")
    api_url: str = ""
    api_token: str = field(default="", repr=False)
    poll_interval: float = 30.0
    state_dir: Path = Path("/var/lib/portslice-gateway")

    @property
    def queue(self) -> str:
        return queue_name(self.datacenter)


def _secret(environ: Mapping[str, str], name: str) -> str:
    """``$NAME``, else the content of the file ``$NAME_FILE`` (Docker secrets)."""
    if environ.get(name):
        return environ[name]
    path = environ.get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else ""


def load_gateway_config(
    *, datacenter: str | None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """The configuration from the environment; ``datacenter`` (the CLI flag) wins."""
    env = os.environ if environ is None else environ

    def get(key: str, default: str = "") -> str:
        return env.get(ENV_PREFIX + key.upper(), default).strip()

    code = datacenter or get("datacenter")
    if not code:
        raise ValueError("--datacenter (or $PORTSLICE_GATEWAY_DATACENTER) is required")
    interval = float(get("poll_interval", "30"))
    if not 0 < interval <= 86400:
        raise ValueError(f"poll_interval={interval!r} is not in (0, 86400] seconds")
    name = get("name") or f"gateway-{code}@{os.uname().nodename}"
    problem = contract.gateway_name_problem(name)
    if problem:
        raise ValueError(f"name={name!r}: {problem} (set $PORTSLICE_GATEWAY_NAME)")
    return GatewayConfig(
        datacenter=code,
        name=name,
        broker_url=get("broker_url"),
        keys_path=Path(get("keys_path", "/etc/portslice/planner-keys.json")),
        api_url=get("api_url").rstrip("/"),
        api_token=_secret(env, ENV_PREFIX + "API_TOKEN"),
        poll_interval=interval,
        state_dir=Path(get("state_dir", "/var/lib/portslice-gateway")),
    )


# --- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """One steering table: the API's JSON document, its revision and ETag."""

    document: dict[str, Any]
    etag: str

    @property
    def revision(self) -> int:
        return int(self.document.get("revision", 0))

    @property
    def slices(self) -> int:
        return len(self.document.get("slices", []))


def table_from_token(token: str, *, keys: Mapping[str, OKPKey], datacenter: str) -> Table:
    """The table in a pushed token, after the signature and claims checks."""
    claims = signed_claims(token, keys=keys, max_bytes=MAX_TOKEN_BYTES)
    expected = {"iss": ISSUER, "aud": AUDIENCE, "sub": datacenter}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise BundleRejected("bad_claims", f"{name}={claims.get(name)!r}, expected {value!r}")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise BundleRejected("expired", f"exp={claims.get('exp')!r} has passed")
    steering, etag = claims.get("steering"), claims.get("etag")
    if not isinstance(steering, dict) or not isinstance(etag, str):
        raise BundleRejected("bad_schema", "steering (object) or etag (string) missing")
    return Table(steering, etag)


def fetch_table(config: GatewayConfig, etag: str = "") -> Table | None:
    """Conditional GET of the steering table; ``None`` when unchanged (304)."""
    url = f"{config.api_url}/api/v1/datacenters/{config.datacenter}/steering"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    request.add_header("Authorization", f"Bearer {config.api_token}")
    if etag:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return Table(json.load(response), response.headers.get("ETag", ""))
    except urllib.error.HTTPError as error:
        if error.code == 304:
            return None
        raise


# --- the kernel --------------------------------------------------------------------------------


class ApplyError(Exception):
    """The update script failed; what the kernel holds is the previous table (see the docs)."""


def run_script(script: str) -> None:
    """Run the update script with ``sh`` (needs root or CAP_NET_ADMIN)."""
    try:
        done = subprocess.run(
            ["sh", "-s"], input=script, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ApplyError(f"cannot run the steering script: {error}") from None
    if done.returncode != 0:
        raise ApplyError(done.stderr.strip() or f"exit status {done.returncode}")


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return "?"


def kernel_checks() -> str:
    """What the gateway depends on, as the kernel says after an apply."""
    return (
        f"ip_forward={_sysctl('net.ipv4.ip_forward')} "
        f"rp_filter(all)={_sysctl('net.ipv4.conf.all.rp_filter')}"
    )


# --- the gateway --------------------------------------------------------------------------------


class Gateway:
    """Applies steering tables in order, one at a time, and says what it applied."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        send_ack: Callable[[dict[str, Any]], None] = lambda _: None,
        run: Callable[[str], None] = run_script,
    ) -> None:
        self.config = config
        self.send_ack = send_ack
        self.run = run
        self.applied: Table | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Fail static: re-apply the stored table before anything else."""
        stored = read_status(self.config.state_dir, STATE_FILE)
        if stored is None:
            log.info("no stored steering table; waiting for the planner")
            return
        table = Table(stored["document"], stored["etag"])
        log.info("re-applying stored steering revision %s", table.revision)
        self.offer(table, source="stored")

    def offer(self, table: Table, *, source: str) -> str:
        """Apply ``table`` if it is new and not older; returns what happened."""
        with self._lock:
            current = self.applied
            if current is not None and source != "stored":
                if table.etag == current.etag:
                    return "unchanged"
                if table.revision < current.revision:
                    log.info("ignoring %s revision %s < %s", source, table.revision,
                             current.revision)  # fmt: skip
                    return "stale"
            return self._apply(table, source)

    def _apply(self, table: Table, source: str) -> str:
        started = time.monotonic()
        try:
            rows = rows_from_document(table.document)
            self.run(render_script(rows, datacenter=self.config.datacenter,
                                   revision=table.revision))  # fmt: skip
        except (SteeringError, ApplyError) as error:
            log.error("steering revision %s from %s not applied: %s", table.revision, source,
                      error)  # fmt: skip
            self._ack(table, "failed", str(error))
            return "failed"
        self.applied = table
        write_status(self.config.state_dir, {"document": table.document, "etag": table.etag},
                     STATE_FILE)  # fmt: skip
        took = time.monotonic() - started
        detail = f"{len(rows)} slices from {source} in {took:.3f}s; {kernel_checks()}"
        log.info("steering revision %s applied: %s", table.revision, detail)
        self._ack(table, "applied", detail)
        return "applied"

    def _ack(self, table: Table, status: str, detail: str) -> None:
        try:
            kwargs = contract.gateway_ack_message(
                name=self.config.name,
                datacenter=self.config.datacenter,
                revision=table.revision,
                etag=table.etag,
                status=status,
                detail=detail,
                slices=table.slices,
            )
        except contract.ContractError as error:  # the planner would refuse it: say why here
            log.warning("gateway ack not sent: %s", error)
            return
        try:
            self.send_ack(kwargs)
        except Exception as error:  # the transport's errors vary; the next apply acks again
            log.warning("gateway ack not sent: %s", error)

    def poll_once(self) -> str:
        if not self.config.api_url:
            return "no api_url"
        etag = self.applied.etag if self.applied is not None else ""
        try:
            table = fetch_table(self.config, etag)
        except (OSError, ValueError) as error:
            log.warning("steering poll failed: %s", error)
            return "poll failed"
        if table is not None:
            return self.offer(table, source="poll")
        if self.applied is not None:
            # A heartbeat: the planner's last_seen says this gateway is alive and in sync.
            self._ack(self.applied, "applied", "")
        return "unchanged"


class Poller(threading.Thread):
    """Polls the API every ``poll_interval`` seconds (at once first)."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(name="portslice-gateway-poll", daemon=True)
        self.gateway = gateway
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while True:
            self.gateway.poll_once()
            if self._stop_event.wait(self.gateway.config.poll_interval):
                return


def register_tasks(app: Celery, gateway: Gateway, keys: Mapping[str, OKPKey]) -> None:
    @app.task(name=APPLY_TASK, ignore_result=True)
    def apply_steering(token: str) -> str:
        try:
            table = table_from_token(token, keys=keys, datacenter=gateway.config.datacenter)
        except BundleRejected as rejection:
            log.warning("steering token rejected: %s", rejection)
            return f"rejected: {rejection.reason}"
        return gateway.offer(table, source="broker")


def run(config: GatewayConfig, *, loglevel: str = "INFO") -> int:
    """``python -m agent gateway``: fail static, then the poller and the Celery worker."""
    from agent.worker import celery_app, ignore_celery_environment

    ignore_celery_environment()
    keys = load_keys(config.keys_path)
    app = celery_app(
        "portslice-gateway",
        broker_url=config.broker_url,
        queue=config.queue,
        broker_folder=config.state_dir / "broker",
    )

    def send_ack(kwargs: dict[str, Any]) -> None:
        app.send_task(ACK_TASK, kwargs=kwargs, queue=PLANNER_QUEUE, retry=True,
                      retry_policy={"max_retries": 3})  # fmt: skip

    gateway = Gateway(config, send_ack=send_ack)
    gateway.start()
    register_tasks(app, gateway, keys)
    poller = Poller(gateway)
    poller.start()
    try:
        if not config.broker_url:
            log.info("no broker_url: polling %s only", config.api_url)
            poller.join()
            return 0
        worker = app.Worker(
            hostname=config.name, queues=[config.queue], pool="solo", concurrency=1,
            loglevel=loglevel, without_gossip=True, without_mingle=True,
        )  # fmt: skip
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        poller.stop()
