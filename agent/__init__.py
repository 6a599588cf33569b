"""The portslice host agent.

Verifies signed config bundles, stores the last good one, and makes the kernel
source every egress connection from this host's own port slices. It never
imports Django or the planner; it talks to the planner only by Celery task name.
It may import :mod:`allocator`. :mod:`agent.gateway` is the datacenter's
gateway (``python -m agent gateway``), which applies steering tables.
"""
