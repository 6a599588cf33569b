"""The apply pipeline: verify → persist → enforce → ack (docs/agent.md).

:class:`Agent` owns the host's view of its bundle. The Celery worker calls
:meth:`Agent.apply` for every ``agent.apply_bundle`` message and sends back the
:class:`Ack` it returns; the usage reporter, the metrics and the fd-passing
service read :attr:`Agent.bundle`. Nothing here talks to the broker.

Rules:

* A token that fails verification changes nothing: ack ``rejected`` with the
  :class:`agent.bundle.BundleRejected` reason.
* A verified bundle is persisted first (a crash after that restarts with it),
  then enforced. If enforcement fails, the previous good bundle is written back
  to the store (the kernel still holds the previous ruleset, since nft replaces
  the table in one transaction), and the ack is ``failed`` with the error; the
  planner may resend the same serial, which is then tried again. A bundle
  whose egress addresses are missing on the host stays applied (its guard is
  right) but is acked ``failed`` naming them, so a resend checks again.
* The serial already applied and enforced again is a no-op: ack ``applied``
  with note ``duplicate``.
* Fail static (:meth:`Agent.start`): the stored bundle is verified again
  (signature, kid, iss, aud, sub; not ``exp``) and enforced before the broker
  is contacted. A corrupt or unverifiable state file is reported and ignored.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from joserfc.jwk import OKPKey

import contract
from agent.bundle import Bundle, BundleRejected, verify
from agent.config import EXACT, AgentConfig
from agent.enforce import Enforcement, enforce
from agent.state import StateCorrupt, StateStore

log = logging.getLogger(__name__)

APPLIED: Final = contract.APPLIED
REJECTED: Final = contract.REJECTED
FAILED: Final = contract.FAILED
DUPLICATE: Final = contract.DUPLICATE
#: ``reason`` of a ``failed`` ack.
ENFORCEMENT_FAILED: Final = "enforcement_failed"
PERSIST_FAILED: Final = "persist_failed"

STATUS_FILE: Final = "enforcement.json"


class Observer(Protocol):
    """What the metrics need to hear from the pipeline."""

    def rejected(self, reason: str) -> None: ...

    def enforced(self, bundle: Bundle, enforcement: Enforcement) -> None: ...


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of one apply, sent as the kwargs of ``planner.record_ack``.

    See :mod:`agent.worker` for the field contract.
    """

    hostname: str
    serial: int | None
    status: str
    reason: str = ""
    detail: str = ""
    note: str = ""
    applied_serial: int | None = None
    revision: int | None = None
    applied_at: str = ""
    enforcement: dict[str, Any] = field(default_factory=dict)

    def as_kwargs(self) -> dict[str, Any]:
        return contract.ack_message(**asdict(self))


@dataclass(frozen=True, slots=True)
class Startup:
    """What :meth:`Agent.start` found: the bundle it enforces, or why there is none."""

    bundle: Bundle | None
    enforcement: Enforcement | None
    problem: str = ""


def claimed_serial(token: object) -> int | None:
    """The ``serial`` a token *claims*, unverified: only to label a rejection ack."""
    try:
        payload = str(token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError):
        return None
    serial = claims.get("serial") if isinstance(claims, dict) else None
    return serial if type(serial) is int else None


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class Agent:
    """This host's bundle: verified, stored, enforced. Thread-safe."""

    def __init__(
        self,
        config: AgentConfig,
        keys: Mapping[str, OKPKey],
        *,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self.store = StateStore(config.state_dir)
        self.observer = observer
        self.clock = clock
        self._lock = threading.Lock()
        self.bundle: Bundle | None = None
        self.enforcement: Enforcement | None = None
        # Serials at or below this are stale even when the stored bundle is unusable.
        self._floor = 0

    # --- start (fail static) ---------------------------------------------------------------

    def start(self) -> Startup:
        """Reload, re-verify and enforce the stored bundle; never contacts the broker."""
        with self._lock:
            try:
                bundle = self.store.load_verified(
                    keys=self.keys, hostname=self.config.hostname, now=self.clock()
                )
            except (StateCorrupt, BundleRejected) as error:
                return self._unusable_state(error)
            if bundle is None:
                log.info("no stored bundle yet; waiting for the planner")
                return Startup(None, None, "no bundle stored yet")
            self._floor = bundle.serial
            self.bundle = bundle
            self.enforcement = self._enforce(bundle)
            log.info(
                "fail static: stored bundle serial %s enforced: %s",
                bundle.serial,
                self.enforcement.as_dict(),
            )
            return Startup(bundle, self.enforcement)

    def _unusable_state(self, error: Exception) -> Startup:
        problem = f"stored state not trusted: {error}"
        log.error("%s (%s); waiting for a new bundle", problem, self.store.path)
        with contextlib.suppress(StateCorrupt):
            stored = self.store.load()
            if stored is not None:
                self._floor = stored.serial
        return Startup(None, None, problem)

    # --- apply ------------------------------------------------------------------------------

    def apply(self, token: str) -> Ack:
        """Verify, persist, enforce ``token``; the returned :class:`Ack` says what happened."""
        with self._lock:
            now = self.clock()
            try:
                bundle = verify(
                    token,
                    keys=self.keys,
                    hostname=self.config.hostname,
                    last_serial=self._last_serial(),
                    now=now,
                )
            except BundleRejected as rejection:
                return self._rejected(token, rejection)
            current = self.bundle
            if current is not None and bundle.serial == current.serial:
                if self.enforcement is not None and self.enforcement.ok:
                    return self._ack(bundle, APPLIED, note=DUPLICATE, now=now)
                return self._enforce_and_ack(bundle, now, previous=current)
            try:
                self.store.save(bundle)
            except OSError as error:
                log.error("cannot persist bundle serial %s: %s", bundle.serial, error)
                return self._ack(bundle, FAILED, reason=PERSIST_FAILED, detail=str(error), now=now)
            return self._enforce_and_ack(bundle, now, previous=current)

    def _last_serial(self) -> int:
        # The applied serial itself passes verification, so a resend can be acked as duplicate.
        if self.bundle is not None:
            return self.bundle.serial - 1
        return self._floor

    def _rejected(self, token: object, rejection: BundleRejected) -> Ack:
        log.warning("bundle rejected: %s", rejection)
        if self.observer is not None:
            self.observer.rejected(rejection.reason)
        return Ack(
            hostname=self.config.hostname,
            serial=claimed_serial(token),
            status=REJECTED,
            reason=rejection.reason,
            detail=rejection.detail,
            **self._current_fields(),
        )

    def _enforce_and_ack(self, bundle: Bundle, now: float, *, previous: Bundle | None) -> Ack:
        enforcement = self._enforce(bundle)
        if enforcement.kernel_refused:
            log.error("bundle serial %s not applied: %s", bundle.serial, enforcement.errors)
            if previous is not None and previous.serial != bundle.serial:
                self._restore(previous)
            return self._failed(bundle, enforcement, now)
        self.bundle, self.enforcement = bundle, enforcement
        self._floor = max(self._floor, bundle.serial)
        if not enforcement.ok:
            # Applied (the guard and the port range hold), but not usable in full: say so,
            # and a resend of the same serial checks again.
            log.error(
                "bundle serial %s applied incompletely: %s", bundle.serial, enforcement.errors
            )
            return self._failed(bundle, enforcement, now)
        log.info("bundle serial %s applied: %s", bundle.serial, enforcement.as_dict())
        return self._ack(bundle, APPLIED, now=now)

    def _failed(self, bundle: Bundle, enforcement: Enforcement, now: float) -> Ack:
        return self._ack(
            bundle,
            FAILED,
            reason=ENFORCEMENT_FAILED,
            detail=enforcement.errors,
            now=now,
            enforcement=enforcement,
        )

    def _restore(self, previous: Bundle) -> None:
        try:
            self.store.save(previous)
        except OSError as error:
            # A restart would then enforce the new bundle, or fail the same way and say so.
            log.error("cannot restore bundle serial %s in the store: %s", previous.serial, error)

    def _enforce(self, bundle: Bundle) -> Enforcement:
        enforcement = enforce(
            bundle,
            manage_port_range=self.config.manage_port_range,
            manage_nftables=self.config.manage_nftables,
            add_addresses=self.config.add_addresses,
            loopback_egress=self.config.loopback_egress,
            exact=self.config.port_range_mode == EXACT,
            route_source=self.config.route_source,
        )
        self._write_status(bundle, enforcement)
        if self.observer is not None:
            self.observer.enforced(bundle, enforcement)
        return enforcement

    def _current_fields(self) -> dict[str, Any]:
        return {
            "applied_serial": None if self.bundle is None else self.bundle.serial,
            "enforcement": {} if self.enforcement is None else self.enforcement.as_dict(),
        }

    def _ack(
        self,
        bundle: Bundle,
        status: str,
        *,
        now: float,
        reason: str = "",
        detail: str = "",
        note: str = "",
        enforcement: Enforcement | None = None,
    ) -> Ack:
        fields = self._current_fields()
        if enforcement is not None:
            fields["enforcement"] = enforcement.as_dict()
        return Ack(
            hostname=self.config.hostname,
            serial=bundle.serial,
            status=status,
            reason=reason,
            detail=detail,
            note=note,
            revision=bundle.revision,
            applied_at=_iso(now) if status == APPLIED else "",
            **fields,
        )

    # --- the status file (read by ``python -m agent status``) --------------------------------

    def _write_status(self, bundle: Bundle, enforcement: Enforcement) -> None:
        document = {
            **enforcement.as_dict(),
            "ok": enforcement.ok,
            "at": _iso(self.clock()),
            "pid": os.getpid(),
            "revision": bundle.revision,
        }
        try:
            write_status(self.config.state_dir, document)
        except OSError as error:
            log.warning("cannot write %s: %s", STATUS_FILE, error)


def write_status(state_dir: Path, document: Mapping[str, Any], name: str = STATUS_FILE) -> None:
    """Replace ``state_dir/<name>`` (``enforcement.json``) atomically."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=state_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
        os.replace(temp, state_dir / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def read_status(state_dir: Path, name: str = STATUS_FILE) -> dict[str, Any] | None:
    """The last enforcement the agent recorded, ``None`` if none (or unreadable)."""
    try:
        document = json.loads((state_dir / name).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
