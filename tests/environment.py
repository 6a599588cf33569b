"""Loaded as a pytest plugin (``-p tests.environment``) before Django reads its settings.

Tasks that Django code enqueues go to kombu's in-process ``memory://``
transport, not into the quick start's ``var/`` folders; the tests of the
Celery wiring start their own apps on real Redis.
"""

import os

os.environ.setdefault("CELERY_BROKER_URL", "memory://")
