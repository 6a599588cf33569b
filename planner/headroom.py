"""Headroom per pool from a few aggregate queries: no slice is loaded as an object.

The rules are the allocator's (:func:`allocator.headroom_of_counts`: the slot
grid, reserved ports, IP states, weights, aligned pools); the database only
counts what they need:

- per egress IP, the port runs its live slices cover, touching slices merged
  (gaps and islands): a packed IP is one run from one GROUP BY, however many
  slices it holds, and only fragmented IPs are walked slice by slice;
- per pool, how many of its active machines have each (weight, live slices
  held in the pool), from one GROUP BY of memberships and slices.

At 80,000 slices that is about 4,000 runs and a few dozen counts instead of
80,000 rows made into allocator objects (tests/planner/test_headroom.py holds
the two equal on PostgreSQL).
"""

from __future__ import annotations

from collections import Counter

from django.core.cache import cache
from django.db import connection
from django.db.models import Max

import allocator as alloc
from planner.choices import MachineState
from planner.models import (
    AuditEntry,
    Datacenter,
    EgressIP,
    EgressPool,
    Machine,
    PortSlice,
)

# The datacenter's IPs, for the queries below.
DATACENTER_IPS = """
SELECT i.id FROM {ip} i JOIN {pool} p ON p.id = i.pool_id WHERE p.datacenter_id = %(datacenter)s
"""

# The runs of touching slices per IP, as (ip, lo, hi, starts, ends) rows of the
# slices that begin or end one. Slices of an IP never overlap (NoOverlapConstraint:
# an exclusion constraint on PostgreSQL, the writers' check on SQLite), so an IP
# whose slices' ports add up to the span from its lowest to its highest port is
# one run (a packed IP: one row, from one GROUP BY); only the others are walked
# with a window, where a run ends exactly where the next slice does not start on
# the following port (-2: no slice there, never a port next to one). Runs on
# PostgreSQL and on SQLite (the quick start) alike.
RUN_EDGES = """
WITH spans AS (
    SELECT ip_id, min(lo) AS lo, max(hi) AS hi,
           sum(hi - lo + 1) = max(hi) - min(lo) + 1 AS whole
    FROM {slice}
    WHERE ip_id IN (%(ips)s)
    GROUP BY ip_id
)
SELECT ip_id, lo, hi, true, true FROM spans WHERE whole
UNION ALL
SELECT ip_id, lo, hi, starts, ends
FROM (
    SELECT s.ip_id, s.lo, s.hi,
           coalesce(lag(s.hi) OVER next_to, -2) <> s.lo - 1 AS starts,
           coalesce(lead(s.lo) OVER next_to, -2) <> s.hi + 1 AS ends
    FROM {slice} s
    WHERE s.ip_id IN (SELECT ip_id FROM spans WHERE NOT whole)
    WINDOW next_to AS (PARTITION BY s.ip_id ORDER BY s.lo)
) edges
WHERE starts OR ends
"""

# Per pool of the datacenter: its members by (active, weight, slices held in the pool).
MEMBER_COUNTS = """
SELECT link.egresspool_id, m.state = %(active)s, m.weight, coalesce(held.n, 0), count(*)
FROM {link} link
JOIN {machine} m ON m.id = link.machine_id
LEFT JOIN (
    SELECT s.machine_id, i.pool_id, count(*) AS n
    FROM {slice} s
    JOIN {ip} i ON i.id = s.ip_id
    WHERE s.ip_id IN (%(ips)s)
    GROUP BY s.machine_id, i.pool_id
) held ON held.machine_id = link.machine_id AND held.pool_id = link.egresspool_id
WHERE link.egresspool_id IN (SELECT id FROM {pool} WHERE datacenter_id = %(datacenter)s)
  AND m.datacenter_id = %(datacenter)s
GROUP BY 1, 2, 3, 4
"""

# A count outlives no write (its key changes), so this only bounds the cache's size.
CACHE_SECONDS = 600

TABLES = {
    "slice": PortSlice._meta.db_table,
    "ip": EgressIP._meta.db_table,
    "pool": EgressPool._meta.db_table,
    "machine": Machine._meta.db_table,
    "link": Machine.pools.through._meta.db_table,
}


def datacenter_headroom(*, datacenter: Datacenter) -> dict[str, alloc.PoolHeadroom]:
    """:func:`headroom_counted`, cached in the cache every web process shares.

    Keyed by the datacenter and the newest audit entry: every write headroom
    depends on (inventory rows, pools served, slices written by a plan apply,
    drains ended, which apply a plan) is audited, so a write makes a new key and
    the next view counts afresh. Usage reports and agent acks do not change it.
    The datacenter page asks twice (the pools table, the attention strip) and
    ``/metrics`` and the forecasts once more.
    """
    key = f"portslice:headroom:{datacenter.pk}:{newest_audit_entry()}"
    found: dict[str, alloc.PoolHeadroom] | None = cache.get(key)
    if found is None:
        found = headroom_counted(datacenter=datacenter)
        cache.set(key, found, CACHE_SECONDS)
    return found


def newest_audit_entry() -> int:
    """The id of the newest audit entry (0 for none): a key part that changes with every
    audited write (inventory, memberships, plan applies; not usage reports)."""
    return AuditEntry.objects.aggregate(newest=Max("id"))["newest"] or 0


def headroom_counted(*, datacenter: Datacenter) -> dict[str, alloc.PoolHeadroom]:
    """Each pool's :class:`allocator.PoolHeadroom` by pool key, in four queries."""
    # planner.selectors imports this module (its pool_headroom): imported here.
    from planner.selectors import pool_inputs

    pools = pool_inputs(datacenter=datacenter)
    keys, addresses = pools.keys, pools.addresses
    arguments: dict[str, int | str] = {
        "datacenter": datacenter.pk,
        "active": MachineState.ACTIVE.value,
    }
    taken: dict[str, list[tuple[int, int]]] = {}
    members: dict[str, Counter[tuple[int, int]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_sql(RUN_EDGES), arguments)
        start = 0
        for ip_id, lo, hi, starts, ends in sorted(cursor.fetchall()):
            if starts:
                start = lo
            if ends:
                taken.setdefault(addresses[ip_id], []).append((start, hi))
        cursor.execute(_sql(MEMBER_COUNTS), arguments)
        for pool_id, active, weight, held, count in cursor.fetchall():
            shapes = members.setdefault(keys[pool_id], Counter())
            if active:
                shapes[(weight, held)] += count
    return alloc.headroom_of_counts(
        ips=pools.ips, policies=pools.policies, taken=taken, members=members
    )


def _sql(query: str) -> str:
    """``query`` with the tables' names and the datacenter's IPs filled in."""
    return query.replace("%(ips)s", DATACENTER_IPS.strip()).format(**TABLES)
