"""Loaded as a pytest plugin (``-p tests.environment``) before Django reads its settings.

- Tasks that Django code enqueues go to kombu's in-process ``memory://``
  transport, not into the quick start's ``var/`` folders; the tests of the
  Celery wiring start their own apps on real Redis.
- The UDP egress lock files go to a folder of this run (children inherit it),
  removed at the end, instead of the host's ``/run/portslice``.
"""

import os
import shutil
import tempfile

os.environ.setdefault("CELERY_BROKER_URL", "memory://")
_RUN_DIR = tempfile.mkdtemp(prefix="portslice-run-")
os.chmod(_RUN_DIR, 0o1777)
os.environ.setdefault("PORTSLICE_RUN_DIR", _RUN_DIR)


def pytest_unconfigure() -> None:
    shutil.rmtree(_RUN_DIR, ignore_errors=True)
