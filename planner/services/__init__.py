"""Every write to the planner's tables goes through this package.

One module per topic: ``inventory``, ``plans``, ``rebalance``, ``bundles``,
``keys``, ``reports``, ``steering``, ``tokens`` and ``users``, and ``locks``, the datacenter
lock they share. Services are keyword-only, typed, named
``<entity>_<action>``, and run inside one transaction: they apply whole or not
at all. Reads live in :mod:`planner.selectors`.
"""
