"""The operator UI: server-rendered pages (templates under the top-level ``templates/``).

Views read through :mod:`planner.selectors`, :mod:`planner.dashboard` and
:mod:`planner.heatmap`, draw with :mod:`planner.charts`, and write only through
:mod:`planner.services`.
"""
