"""Port-space limits and error messages the tests import."""

from __future__ import annotations

PORT_MIN = 1
PORT_MAX = 65535
USABLE_LO = 1024  # 0-1023 are never handed out
USABLE_HI = 65535
# A count; allocator.USABLE_PORTS is the range itself (a PortRange).
USABLE_PORT_COUNT = USABLE_HI - USABLE_LO + 1  # 64,512
# Reserved ports of one IP: listeners and health checks, not a range to give away.
MAX_RESERVED_PORTS = 4096

ERR_COUNTRY = "%(value)r is not an ISO 3166-1 alpha-2 country code."
ERR_REGION = "%(value)r is not an ISO 3166-2 subdivision code."
ERR_REGION_COUNTRY = "Region %(region)r is not in country %(country)r."
ERR_HOSTNAME = "%(value)r is not an RFC 1123 host name: %(why)s."
ERR_GATEWAY_NAME = "%(value)r is not a gateway name: %(why)s."
ERR_HOST_ADDRESS = "%(value)r is not a usable host address (%(why)s)."
ERR_USABLE_BOUNDS = "Usable ports must lie within %(lo)d-%(hi)d; got %(value)d."
ERR_USABLE_ORDER = "usable_lo %(lo)d is above usable_hi %(hi)d."
ERR_RESERVED_COUNT = "%(count)d reserved ports; at most %(limit)d per IP."
ERR_RESERVED = "Reserved port %(value)r is outside the usable range %(lo)d-%(hi)d."
ERR_SLICE_ORDER = "lo %(lo)d is above hi %(hi)d."
ERR_SLICE_RANGE = "Slice %(lo)d-%(hi)d is outside %(ip)s's usable range %(ulo)d-%(uhi)d."
ERR_SLICE_OVERLAP = "Ports overlap a live slice on the same IP."
ERR_POOL_KEY = "Another pool of this datacenter is already named %(key)r; tell them apart."
ERR_POOL_DATACENTER = "Pool %(pool)s is in datacenter %(pool_dc)s, not %(dc)s."
ERR_STALE_BASE = (
    "Plan is based on revision %(base)d but revision %(current)d is current; preview again."
)
ERR_STALE_DIGEST = (
    "The inputs of %(datacenter)s changed since this preview (another apply, an inventory "
    "edit or a drain that ended); nothing was applied. Review the fresh preview and apply it."
)
ERR_LOCKED = "Another change to %(datacenter)s is being written; try again in a moment."
ERR_DISPLACES_SLICES = (
    "Changing %(object)s would leave %(count)d live slice(s) outside what it now allows. "
    "Preview the change with ?plan=preview to see the plan that drains them, then "
    "apply both together with ?plan=apply&inputs_digest=<the preview's digest>."
)
ERR_HOLDS_SLICES = (
    "%(object)s still holds live slices. Set it to draining and let them drain, or "
    "remove it together with a plan that frees them (?plan=preview, then ?plan=apply)."
)
ERR_MACHINE_HOLDS_SLICES = (
    "%(object)s still holds live slices. Set its state to draining or retired, apply "
    "the plan, and delete it once its slices have drained."
)
ERR_GONE = "%(object)s was removed by another change meanwhile; nothing was written."
ERR_IN_USE = "%(object)s is still in use; remove what uses it first."
ERR_NOTHING_TO_PLAN = "%(object)s belongs to no datacenter yet: there is no plan to make with it."
ERR_CONCURRENT = (
    "This write conflicted with another change made at the same moment; nothing was "
    "written. Read the current state and try again."
)
ERR_KEY_EXISTS = "An active signing key exists; use 'rotate' to replace it."
ERR_KEY_UNKNOWN = "No signing key with kid %(kid)r."
ERR_KEY_ACTIVE = "Key %(kid)r is the active key; rotate first, then retire it."
ERR_NO_ACTIVE_KEY = "No active signing key; run 'manage.py signing_key generate'."
ERR_DATACENTER_MOVE = (
    "Cannot move to another datacenter: its slices and bundles belong to this one. "
    "Retire it and create a new one there."
)
ERR_COLD_HOT = "cold %(cold)s must be below hot %(hot)s."
ERR_NOT_DRAFT = "Revision %(number)d of %(datacenter)s is %(status)s, not a draft."
ERR_DRAFT_STALE = (
    "Draft %(number)d was planned on inputs that have changed since; "
    "rebalance will draft again, or preview and apply by hand."
)

# A pool's columns the allocator's PoolPolicy takes, by the same names: one list for
# the planner's inputs, imports and the dirty-pool trigger's policy columns.
POLICY_FIELDS = ("slice_size", "slices_per_machine", "max_slices_per_machine", "aligned")
