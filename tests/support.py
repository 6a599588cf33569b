"""Test helpers shared by every test package.

A test that needs something the machine may lack (root, PostgreSQL, a broker,
a kernel feature) calls :func:`need`. Under ``CI=true`` a missing need fails the
test, because CI is where those tests must run; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(condition: bool, reason: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless ``condition`` holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but this test cannot run: {reason}")
    pytest.skip(reason)


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces, nftables, sysctl)")


def need_redis() -> None:
    need(port_answers("127.0.0.1", 6379), "needs Redis on 127.0.0.1:6379")
