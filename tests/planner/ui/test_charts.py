"""Every figure planner.charts builds is valid Plotly (checked against plotly's schema)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pytest

from planner import charts, dashboard
from planner import heatmap as hm
from planner.models import Machine
from planner.services.plans import plan_preview
from tests.planner.factories import make_machine
from tests.planner.ui.fixtures import UiSite

pytestmark = pytest.mark.django_db


def _valid(figure: dict[str, Any]) -> go.Figure:
    return go.Figure(figure)  # raises ValueError on any unknown or bad property


@pytest.mark.parametrize("mode", hm.MODES)
@pytest.mark.parametrize("collapse", [False, True])
def test_it_builds_valid_heatmap_figures(ui_site: UiSite, mode: str, collapse: bool) -> None:
    picture = hm.datacenter_heatmap(
        datacenter=ui_site.datacenter, mode=mode, filters=hm.HeatmapFilter(collapse=collapse)
    )
    figure = _valid(charts.heatmap_figure(picture))
    assert len(figure.data[0].z) == (2 if collapse else 3)


def test_it_builds_a_valid_diff_figure_that_highlights_the_added_slice(ui_site: UiSite) -> None:
    make_machine("edge3.fra1.example.net", datacenter=ui_site.datacenter).pools.add(ui_site.warp)
    preview = plan_preview(datacenter=ui_site.datacenter)
    assert preview.plan is not None
    rows, pools = hm.ip_rows(datacenter=ui_site.datacenter, filters=hm.HeatmapFilter())
    picture = hm.build_heatmap(
        datacenter=ui_site.datacenter,
        mode=hm.DIFF,
        rows=rows,
        pools=pools,
        slices=hm.plan_slices(preview.plan),
        filters=hm.HeatmapFilter(collapse=False),
    )
    _valid(charts.heatmap_figure(picture))
    added = hm.DIFF_BASE + hm.DIFF_KINDS.index("added")
    (slice_,) = preview.plan.diff.added
    row = [r["ip"] for r in picture.rows].index(slice_.ip)
    assert picture.z[row][(slice_.lo - 1024) // picture.bucket] == added


def test_it_builds_a_valid_usage_chart(ui_site: UiSite) -> None:
    machine = Machine.objects.get(hostname="edge0.fra1.example.net")
    figure = _valid(charts.usage_figure(dashboard.usage_history(machine=machine)))
    assert sorted(max(trace.y) for trace in figure.data) == [0.25, 0.5]


def test_it_builds_a_valid_use_over_time_chart(ui_site: UiSite) -> None:
    series = dashboard.pool_use_over_time(datacenter=ui_site.datacenter)
    figure = _valid(charts.use_over_time_figure(series))
    (trace,) = figure.data
    assert list(trace.y) == [ui_site.cdn.key, ui_site.warp.key]
    assert len(trace.x) == 24 and all(len(row) == 24 for row in trace.z)
    # The fixture reported this hour: as the pools table's use, cdn 25 %, warp 16.7 %.
    assert trace.z[0][-1] == 0.25 and trace.z[1][-1] == round(4096 / (3 * 8192), 4)
