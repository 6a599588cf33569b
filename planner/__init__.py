"""The portslice planner: the Django project and its one app.

Holds the inventory (datacenters, pools, egress IPs, machines), the port slices
and their revisions, and everything that reads or writes them: services (the
only writers), selectors (reads), the admin, the API and the Celery tasks. It
calls :mod:`allocator` to compute slices and never imports :mod:`agent`.
"""
