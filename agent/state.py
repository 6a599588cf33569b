"""The agent's state store: the last good bundle token and the serial applied.

One JSON file, ``bundle.json``, replaced atomically: write a temporary file in
the same directory, fsync it, ``os.replace`` it over the old one, fsync the
directory. A crash at any moment leaves the old file or the new one, never a
mix (tests/agent/test_state.py kills writers with SIGKILL to show it). The file
carries a SHA-256 of its content, so a file damaged some other way raises
:class:`StateCorrupt` instead of being trusted.

One writer per directory (the agent); any number of readers.

Fail static (docs/design.md): :meth:`StateStore.load_verified` accepts a stored
bundle whose ``exp`` has passed. Expiry protects a host from a replayed old
bundle arriving from the broker; the stored one was verified when it was
applied, and the host must keep enforcing it while the planner is away. The
signature, kid, ``iss``, ``aud`` and ``sub`` are checked again, since the file
could have been written by something other than the agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from joserfc.jwk import OKPKey

from agent.bundle import Bundle, verify

FILENAME: Final = "bundle.json"
FORMAT: Final = 1
_TEMP_PREFIX: Final = f".{FILENAME}."
_TEMP_SUFFIX: Final = ".tmp"
#: A temporary file older than this was left by a writer that died.
_STALE_TEMP_SECONDS: Final = 60.0
_ANY_SERIAL: Final = -(2**63)


class StateCorrupt(Exception):
    """The state file exists but cannot be trusted (unreadable, malformed, bad checksum)."""


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the store holds: the token of the last good bundle and its serial."""

    token: str
    serial: int


def _digest(token: str, serial: int) -> str:
    return hashlib.sha256(f"{FORMAT}\n{serial}\n{token}".encode()).hexdigest()


def _encode(state: StoredState) -> bytes:
    document = {
        "format": FORMAT,
        "serial": state.serial,
        "token": state.token,
        "sha256": _digest(state.token, state.serial),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _decode(raw: bytes, path: Path) -> StoredState:
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise StateCorrupt(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateCorrupt(f"{path}: not a format-{FORMAT} state file")
    token, serial = document.get("token"), document.get("serial")
    if not isinstance(token, str) or type(serial) is not int:
        raise StateCorrupt(f"{path}: token or serial missing or mistyped")
    if document.get("sha256") != _digest(token, serial):
        raise StateCorrupt(f"{path}: checksum mismatch")
    return StoredState(token=token, serial=serial)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """The state file in ``directory`` (created if missing, mode 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILENAME

    def save(self, bundle_or_token: Bundle | str, serial: int | None = None) -> None:
        """Persist a token (or a :class:`Bundle`, whose serial is used if none is given)."""
        if isinstance(bundle_or_token, Bundle):
            token = bundle_or_token.token
            serial = bundle_or_token.serial if serial is None else serial
        else:
            token = bundle_or_token
        if serial is None:
            raise TypeError("save(token, serial): serial is required with a bare token")
        self._write(_encode(StoredState(token=token, serial=serial)))

    def _write(self, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale_temps()
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_directory(self.directory)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for temp in self.directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()

    def load(self) -> StoredState | None:
        """The stored state; ``None`` if nothing was saved, :class:`StateCorrupt` if damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StateCorrupt(f"{self.path}: unreadable ({error})") from error
        return _decode(raw, self.path)

    def load_verified(
        self, *, keys: Mapping[str, OKPKey], hostname: str, now: float
    ) -> Bundle | None:
        """The stored bundle, verified again except for ``exp``/``iat`` (see module docstring).

        Raises :class:`agent.bundle.BundleRejected` if the token no longer
        verifies (e.g. its key was removed) and :class:`StateCorrupt` if the
        serial stored beside it is not the token's own.
        """
        state = self.load()
        if state is None:
            return None
        bundle = verify(
            state.token,
            keys=keys,
            hostname=hostname,
            # The serial is compared with the stored one below instead.
            last_serial=_ANY_SERIAL,
            now=now,
            check_times=False,
        )
        if bundle.serial != state.serial:
            raise StateCorrupt(
                f"{self.path}: stored serial {state.serial} but the token carries {bundle.serial}"
            )
        return bundle
