"""Plotly figures (plain ``{"data", "layout"}`` dicts) from selector output.

Dicts rather than ``plotly.graph_objects``: a 4,000-row heatmap has a million
cells, and the objects' validation would cost more than building the grid.
The tests validate every figure made here against Plotly's schema instead.
The browser draws them with the plotly.js that the plotly package ships,
served by the app itself (``planner/staticfinders.py``).
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from planner import heatmap as hm
from planner.forecast import PoolForecast

# Categorical colours. Machines: ten hues that stay apart for common colour
# blindness (no grey among them: grey means reserved or unusable).
MACHINE_PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#1f5f8b",
]
UNUSABLE_COLOUR, RESERVED_COLOUR, FREE_COLOUR = "#d9d9d9", "#8c8c8c", "#f7f7f2"
DIFF_COLOURS = {
    "kept": "#c9d6e6",
    "added": "#1a9850",
    "draining": "#e66101",
    "freed": "#7b3294",
    "revived": "#2c7bb6",
    "still_draining": "#fdb863",
}
KEPT_ALTERNATE_COLOUR = "#a9bcd3"  # every other kept slice, so neighbours stay apart
DIFF_NAMES = {
    "kept": "kept",
    "added": "added",
    "draining": "starts draining",
    "freed": "freed",
    "revived": "back to its owner",
    "still_draining": "still draining",
}
# The same three colours, with the same names, in every view and mode.
BASE_LEGEND = [
    ("free", FREE_COLOUR),
    ("reserved", RESERVED_COLOUR),
    ("unusable (outside the usable range or the slot grid)", UNUSABLE_COLOUR),
]
# Viridis, perceptually uniform, for 0-100 %; below 0 the cells that are no measured use.
VIRIDIS = [
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
]
UTIL_ZMIN = -0.3
NO_REPORT_COLOUR = "#f4c6d7"
PERCENTS = ["0%", "25%", "50%", "75%", "100%"]


# One row per pool, ownership: the share of the pool's IPs handed out, from free to dark blue.
SHARE_COLOURS = ["#f7f7f2", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]


def banded_scale(colours: list[str]) -> list[list[Any]]:
    """Three bands below 0 (unusable, reserved, no report), then ``colours`` over 0-100 %."""
    span = 1 - UTIL_ZMIN

    def at(value: float) -> float:
        return (value - UTIL_ZMIN) / span

    scale: list[list[Any]] = []
    for lo, hi, colour in (
        (UTIL_ZMIN, -0.2, UNUSABLE_COLOUR),
        (-0.2, -0.1, RESERVED_COLOUR),
        (-0.1, 0.0, NO_REPORT_COLOUR),
    ):
        scale += [[at(lo), colour], [at(hi), colour]]
    steps = len(colours) - 1
    zero = at(0.0)
    scale += [[zero + (1 - zero) * i / steps, colour] for i, colour in enumerate(colours)]
    return scale


UTILIZATION_SCALE = banded_scale(VIRIDIS)
SHARE_SCALE = banded_scale(SHARE_COLOURS)
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 13}


def plotly_text(text: str) -> str:
    """``text`` as Plotly shows it, never as markup.

    Plotly reads a subset of HTML in every text it draws (labels, ticks, hover,
    titles, legend names): a pool city ``<a href=...>`` would become a live link.
    Escaped, it is drawn as the characters it is (Plotly decodes the entities).
    Every string from the database goes through here on its way into a figure.
    """
    return html.escape(text, quote=False)


def discrete_colorscale(colours: list[str]) -> list[list[Any]]:
    """A colour scale that maps integer code i (0..n-1) to ``colours[i]`` exactly."""
    steps = len(colours)
    scale: list[list[Any]] = []
    for index, colour in enumerate(colours):
        scale.append([index / steps, colour])
        scale.append([(index + 1) / steps, colour])
    return scale


def row_height(rows: int) -> int:
    """Pixels per row: roomy for a few IPs, thin for hundreds (the page scrolls)."""
    return max(3, min(28, 640 // max(rows, 1)))


def heatmap_figure(heatmap: hm.Heatmap) -> dict[str, Any]:
    """The heatmap as a Plotly figure: one heatmap trace, legend swatches, drain marks."""
    labels = [plotly_text(row["label"]) for row in heatmap.rows]
    trace: dict[str, Any] = {
        "type": "heatmap",
        "x": heatmap.edges,
        "y": labels,
        "z": heatmap.z,
        "hoverinfo": "none",
        "xgap": 0,
        "ygap": 1 if len(labels) <= 60 else 0,
        "name": plotly_text(heatmap.mode),
    }
    data = [trace, *_colours(trace, heatmap)]
    if heatmap.draining:
        data.append(_drain_marks(heatmap, labels))
    return {"data": data, "layout": _layout(heatmap, len(labels))}


def _colours(trace: dict[str, Any], heatmap: hm.Heatmap) -> list[dict[str, Any]]:
    """Set the trace's colours; return the legend: swatches, and a colour bar for a measure.

    Free, reserved and unusable keep one colour and one name in every mode; what
    the rest measures is said in the legend (a pool row's share of IPs handed out
    is not a machine, and a use is not an owner). The colour bar spans 0-100 %
    only, so its labels never sit on the categories' names.
    """
    if heatmap.mode == hm.UTILIZATION or heatmap.collapsed:
        utilization = heatmap.mode == hm.UTILIZATION
        colours = VIRIDIS if utilization else SHARE_COLOURS
        trace.update(
            colorscale=UTILIZATION_SCALE if utilization else SHARE_SCALE,
            zmin=UTIL_ZMIN,
            zmax=1,
            showscale=False,
        )
        if utilization:
            title = "sockets in use ÷ ports"
            legend = [*BASE_LEGEND, ("owned, no report yet", NO_REPORT_COLOUR)]
        else:
            title = "share of the pool's IPs handed out"
            legend = BASE_LEGEND
        return [*_swatches(legend), _colour_bar(title, colours)]
    if heatmap.mode == hm.DIFF:
        colours = [
            UNUSABLE_COLOUR,
            RESERVED_COLOUR,
            FREE_COLOUR,
            *DIFF_COLOURS.values(),
            KEPT_ALTERNATE_COLOUR,
        ]
        legend = [*BASE_LEGEND, *((DIFF_NAMES[k], c) for k, c in DIFF_COLOURS.items())]
    else:
        colours = [UNUSABLE_COLOUR, RESERVED_COLOUR, FREE_COLOUR, *MACHINE_PALETTE]
        legend = [
            *BASE_LEGEND,
            ("owned: a colour per machine (hover or search names it)", MACHINE_PALETTE[0]),
        ]
    trace.update(
        colorscale=discrete_colorscale(colours),
        zmin=-0.5,
        zmax=len(colours) - 0.5,
        showscale=False,
    )
    return _swatches(legend)


def _colour_bar(title: str, colours: list[str]) -> dict[str, Any]:
    """An invisible trace that only draws the 0-100 % colour bar of a measured mode."""
    return {
        "type": "scatter",
        "x": [None, None],
        "y": [None, None],
        "mode": "markers",
        "name": title,
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [0, 1],
            "cmin": 0,
            "cmax": 1,
            "colorscale": [[i / (len(colours) - 1), c] for i, c in enumerate(colours)],
            "showscale": True,
            "colorbar": _colorbar(title, [0, 0.25, 0.5, 0.75, 1], PERCENTS),
        },
    }


def _colorbar(title: str, ticks: list[float], labels: list[str]) -> dict[str, Any]:
    return {
        "title": {"text": title, "side": "right"},
        "tickvals": ticks,
        "ticktext": labels,
        "thickness": 14,
        "len": 1,
        "lenmode": "fraction",
    }


def _swatches(entries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Legend entries: invisible points whose square marker shows the colour."""
    return [
        {
            "type": "scatter",
            "x": [None],
            "y": [None],
            "mode": "markers",
            "name": name,
            "marker": {
                "symbol": "square",
                "size": 13,
                "color": colour,
                "line": {"color": "#555", "width": 1},
            },
            "hoverinfo": "skip",
            "showlegend": True,
        }
        for name, colour in entries
    ]


def _drain_marks(heatmap: hm.Heatmap, labels: list[str]) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "markers",
        "name": "draining slice (×)",
        "x": [(lo + hi + 1) / 2 for _, lo, hi in heatmap.draining],
        "y": [labels[row] for row, _, _ in heatmap.draining],
        "marker": {"symbol": "x-thin", "size": 11, "line": {"width": 2.5, "color": "#111"}},
        "hoverinfo": "skip",
    }


def _layout(heatmap: hm.Heatmap, rows: int) -> dict[str, Any]:
    per_row = row_height(rows)
    whole = (heatmap.edges[0], heatmap.edges[-1])
    return {
        "uirevision": f"heatmap-{plotly_text(heatmap.datacenter)}",
        # Room for the colour bar's labels even with a single row.
        "height": max(320, rows * per_row + 150),
        "margin": {"l": 10, "r": 20, "t": 60, "b": 60},
        "font": FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": FREE_COLOUR,
        "hovermode": "closest",
        "dragmode": "zoom",
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "font": {"size": 12}},
        "xaxis": {
            "title": {"text": f"source port (one column = {heatmap.bucket:,} ports)"},
            # Open on the slices (a sparse pool is a sliver of the whole axis);
            # no zoom, reset or drain mark takes the axis outside the port space.
            "range": list(heatmap.fit or whole),
            "autorange": False,
            "minallowed": whole[0],
            "maxallowed": whole[1],
            "autorangeoptions": {"minallowed": whole[0], "maxallowed": whole[1]},
            "tickformat": ",d",
            "nticks": 12,
            "showgrid": False,
            "zeroline": False,
        },
        "yaxis": {
            "title": {"text": "pool · egress IP" if not heatmap.collapsed else "pool"},
            "autorange": "reversed",
            "automargin": True,
            "type": "category",
            "showgrid": False,
            "tickfont": {"size": 12 if per_row >= 16 else 10},
            # Every row labelled while the labels fit; beyond that Plotly thins them.
            **({"tickmode": "linear", "dtick": 1} if per_row >= 11 else {}),
        },
    }


def usage_figure(series: list[tuple[str, list[datetime], list[float]]]) -> dict[str, Any]:
    """A line per slice: sockets in use ÷ ports over time."""
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": plotly_text(name),
                "x": [at.isoformat() for at in times],
                "y": values,
                "hovertemplate": "%{x|%Y-%m-%d %H:%M}<br>%{y:.1%}<extra>"
                + plotly_text(name)
                + "</extra>",
            }
            for name, times, values in series
        ],
        "layout": {
            "height": 320,
            "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
            "font": FONT,
            "xaxis": {"title": {"text": "time (UTC)"}, "type": "date"},
            "yaxis": {
                "title": {"text": "sockets in use ÷ ports"},
                "tickformat": ".0%",
                "rangemode": "tozero",
            },
            "legend": {"orientation": "h", "y": -0.25},
            "colorway": MACHINE_PALETTE,
        },
    }


def use_over_time_figure(series: Any) -> dict[str, Any]:
    """Pools by hour: the high-water utilization (viridis 0-100 %), blank where no report."""
    return {
        "data": [
            {
                "type": "heatmap",
                "x": [hour.isoformat() for hour in series.hours],
                "y": series.pools,
                "z": series.use,
                "zmin": 0,
                "zmax": 1,
                "colorscale": [[i / (len(VIRIDIS) - 1), c] for i, c in enumerate(VIRIDIS)],
                "colorbar": _colorbar("high-water use", [0, 0.25, 0.5, 0.75, 1], PERCENTS),
                "xgap": 1,
                "ygap": 1,
                "hoverongaps": False,
                "hovertemplate": "%{y}<br>%{x|%H:00} UTC: %{z:.1%}<extra></extra>",
            }
        ],
        "layout": {
            "height": max(220, 48 * len(series.pools) + 120),
            "margin": {"l": 10, "r": 20, "t": 20, "b": 50},
            "font": FONT,
            "plot_bgcolor": NO_REPORT_COLOUR,
            "xaxis": {"title": {"text": "hour (UTC), last 24 h"}, "type": "date"},
            "yaxis": {"automargin": True, "autorange": "reversed", "type": "category"},
        },
    }


def heatmap_payload(heatmap: hm.Heatmap) -> dict[str, Any]:
    """What the page's script and ``GET .../heatmap`` get: the figure and the cells' slices."""
    return {**heatmap.as_dict(), "figure": heatmap_figure(heatmap)}


def forecast_figure(outlook: PoolForecast) -> dict[str, Any]:
    """A pool's demand in slices over time, its capacity, and the forecast line ahead
    with its 95 % band (planner/forecast.py)."""
    history, ahead = outlook.history, outlook.projection
    span = [point.at for point in history] + [point.at for point in ahead]
    band = {"type": "scatter", "mode": "lines", "line": {"width": 0}, "hoverinfo": "skip"}
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "slices needed",
            "x": [point.at.isoformat() for point in history],
            "y": [point.slices for point in history],
            "line": {"shape": "hv"},
        },
    ]
    if ahead:
        data += [
            {**band, "name": "band (low)", "showlegend": False,
             "x": [p.at.isoformat() for p in ahead], "y": [p.low for p in ahead]},
            {**band, "name": "95 % band", "fill": "tonexty", "fillcolor": "rgba(99,110,250,0.15)",
             "x": [p.at.isoformat() for p in ahead], "y": [p.high for p in ahead]},
            {"type": "scatter", "mode": "lines", "name": "forecast",
             "line": {"dash": "dash"},
             "x": [p.at.isoformat() for p in ahead], "y": [p.slices for p in ahead]},
        ]  # fmt: skip
    if span:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"capacity ({outlook.capacity} slots)",
                "x": [min(span).isoformat(), max(span).isoformat()],
                "y": [outlook.capacity, outlook.capacity],
                "line": {"color": "#b00020"},
            }
        )
    return {
        "data": data,
        "layout": {
            "height": 320,
            "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
            "font": FONT,
            "xaxis": {"title": {"text": "time (UTC)"}, "type": "date"},
            "yaxis": {"title": {"text": "slices"}, "rangemode": "tozero"},
            "legend": {"orientation": "h", "y": -0.25},
        },
    }
