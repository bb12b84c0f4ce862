"""The report as one HTML page (`--report_html`): the figures in a table, the distributions and the timeline
as charts. One self-contained file: inline SVG and CSS, no script, nothing fetched, so it opens from a
disk, a mail or a CI artifact alike, prints, and shows a value's count when hovered (SVG <title>).

Why drawn here, not by a plotting library: the page needs four kinds of mark (bars, lines, axes, labels)
on linear axes, which take about 150 lines of SVG. matplotlib would add numpy and Pillow (tens of MB) to
draw static images of the same; plotly and Bokeh embed 1-4 MB of JavaScript in every report; pygal's
charts load their tooltip script from the network unless told not to. None would serve the reader better.

Usage::

    html = render_html(report.build(stats))      # a str: write it to a .html file
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_html", "COLORS"]

#: The series colors (color-blind safe, Okabe-Ito): sent, finished, in flight, 429s; the bars.
COLORS = {"sent": "#0072B2", "finished": "#009E73", "in_flight": "#E69F00", "rate_limit_429s": "#D55E00", "bars": "#56B4E9"}
_WIDTH, _HEIGHT = 540, 270
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 46, 44
_MARKERS = (("p50", "#333333"), ("p95", "#CC79A7"), ("p99", "#D55E00"))
#: The distributions drawn, in order, with their titles.
_DISTRIBUTIONS = (
    ("ttft_s", "Time to first token", "requests"),
    ("itl_s", "Inter-token latency", "gaps between tokens"),
    ("latency_s", "End-to-end latency (from sending)", "requests"),
    ("latency_from_scheduled_s", "Latency from scheduling (limiter waits included)", "requests"),
    ("tpot_s", "Time per output token", "requests"),
)

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
p.note { color: #555; margin: 2px 0 12px; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { border-bottom: 2px solid #999; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } .chart { border: 1px solid #e3e3e3; border-radius: 6px; padding: 4px; }
svg text { font: 12px system-ui, sans-serif; fill: #333; } svg .title { font-size: 14px; font-weight: 600; }
svg .grid { stroke: #eee; } svg .axis { stroke: #888; }
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The page for a report as `report.RunReport.build` makes it."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>rate_limited_processor report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Benchmark report</h1>",
        f'<p class="note">{html.escape(_describe(report))}</p>',
        _summary_table(report),
        "<h2>Latency percentiles</h2>",
        _percentile_table(report),
        f'<p class="note">{html.escape(str(report.get("percentiles", "")))}</p>',
        "<h2>Distributions</h2>",
        '<div class="charts">',
    ]
    for key, title, counted in _DISTRIBUTIONS:
        summary = report.get(key)
        if isinstance(summary, Mapping) and summary.get("count"):
            parts.append(_distribution_chart(title, summary, counted))
    parts += ["</div>", "<h2>Timeline</h2>", '<div class="charts">']
    timeline = report.get("timeline") or []
    seconds = [row["second"] for row in timeline]
    parts.append(_line_chart(
        "Requests per second", seconds,
        [("sent (attempts)", COLORS["sent"], [row["sent"] for row in timeline]),
         ("finished", COLORS["finished"], [row["finished"] for row in timeline]),
         ("rate-limit 429s", COLORS["rate_limit_429s"], [row["rate_limit_429s"] for row in timeline])],
        y_label="per second",
    ))
    parts.append(_line_chart("In flight", seconds, [("in flight", COLORS["in_flight"], [row["in_flight"] for row in timeline])], y_label="requests"))
    parts += ["</div>", "</body></html>", ""]
    return "\n".join(parts)


def _describe(report: Mapping[str, Any]) -> str:
    """The settings measured, as a line: "request_url: http://…, stream: on, arrivals: poisson, …"."""
    settings = report.get("settings") or {}
    described = []
    for name, value in settings.items():
        if value in (None, False, ""):
            continue
        shown = "on" if value is True else f"{value:,.0f}" if isinstance(value, float) and value.is_integer() else str(value)
        described.append(f"{name}: {shown}")
    return ", ".join(described) or "a run of rate_limited_processor"


def _seconds(value: Any) -> str:
    """A duration for a person: 850 µs, 12.3 ms, 1.25 s."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def _summary_table(report: Mapping[str, Any]) -> str:
    throughput = report.get("throughput") or {}
    errors = report.get("errors_by_status") or {}
    rows = [
        ("requests", f"{report.get('requests', 0):,}"),
        ("succeeded", f"{report.get('succeeded', 0):,}"),
        ("failed / invalid", f"{report.get('failed', 0):,} / {report.get('invalid', 0):,}"),
        ("duration", _seconds(report.get("duration_s"))),
        ("throughput", f"{throughput.get('requests_per_s', 0):,.2f} requests/s, {throughput.get('output_tokens_per_s', 0):,.1f} output tokens/s"),
        ("rate-limit 429s", f"{report.get('rate_limit_429s', 0):,}"),
        ("errors by status", ", ".join(f"{status}: {count:,}" for status, count in errors.items()) or "none"),
    ]
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _percentile_table(report: Mapping[str, Any]) -> str:
    columns = ("count", "mean", "p50", "p90", "p95", "p99", "max")
    head = "".join(f"<th>{name}</th>" for name in ("", *columns))
    rows = []
    for key, title, _ in _DISTRIBUTIONS:
        summary = report.get(key)
        if not isinstance(summary, Mapping) or not summary.get("count"):
            continue
        cells = [f"{summary['count']:,}"] + [_seconds(summary.get(name)) for name in columns[1:]]
        rows.append(f"<tr><td>{html.escape(title)}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values spanning [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not high > low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(multiple * power for multiple in (1, 2, 5, 10) if multiple * power >= raw)
    first = math.ceil(low / step) * step
    ticks = [first + step * i for i in range(int((high - first) / step + 1e-9) + 1)]
    if ticks[-1] < high:  # the last tick covers the highest value, so nothing is drawn above the frame
        ticks.append(ticks[-1] + step)
    return ticks


def _tick_label(value: float, step: float, *, seconds: bool) -> str:
    if seconds:
        return _seconds(value) if value else "0"
    return f"{value:,.0f}" if step >= 1 else f"{value:,.2g}"


class _Frame:
    """The plot area of one chart: data coordinates to SVG pixels, and its axes."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.width = _WIDTH - _LEFT - _RIGHT
        self.height = _HEIGHT - _TOP - _BOTTOM

    def x(self, value: float) -> float:
        span = self.x1 - self.x0 or 1
        return _LEFT + (value - self.x0) / span * self.width

    def y(self, value: float) -> float:
        span = self.y1 - self.y0 or 1
        return _TOP + self.height - (value - self.y0) / span * self.height

    def axes(self, x_ticks: Sequence[float], y_ticks: Sequence[float], *, x_seconds: bool, x_label: str, y_label: str) -> list[str]:
        marks = []
        y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1
        x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1
        for tick in y_ticks:
            y = self.y(tick)
            marks.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + self.width}" y1="{y:.1f}" y2="{y:.1f}"/>')
            marks.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(tick, y_step, seconds=False)}</text>')
        bottom = _TOP + self.height
        for tick in x_ticks:
            x = self.x(tick)
            marks.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
            marks.append(f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle">{html.escape(_tick_label(tick, x_step, seconds=x_seconds))}</text>')
        marks.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT + self.width}" y1="{bottom}" y2="{bottom}"/>')
        marks.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{bottom}"/>')
        marks.append(f'<text x="{_LEFT + self.width / 2:.1f}" y="{_HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
        marks.append(f'<text transform="translate(14 {_TOP + self.height / 2:.1f}) rotate(-90)" text-anchor="middle">{html.escape(y_label)}</text>')
        return marks


def _svg(title: str, marks: list[str], legend: Sequence[tuple[str, str]] = ()) -> str:
    items = []
    x = _LEFT
    for label, color in legend:
        items.append(f'<rect x="{x}" y="{_TOP - 22}" width="10" height="10" fill="{color}"/><text x="{x + 14}" y="{_TOP - 13}">{html.escape(label)}</text>')
        x += 24 + 7 * len(label)
    return (
        f'<div class="chart"><svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img">'
        f'<title>{html.escape(title)}</title><text class="title" x="{_LEFT}" y="16">{html.escape(title)}</text>'
        + "".join(items) + "".join(marks) + "</svg></div>"
    )


def _distribution_chart(title: str, summary: Mapping[str, Any], counted: str) -> str:
    """Bars of the histogram, with the p50, p95 and p99 marked."""
    histogram = summary["histogram"]
    edges, counts = histogram["edges_s"], histogram["counts"]
    y_ticks = _ticks(0, max(max(counts), 1))
    x_ticks = [tick for tick in _ticks(edges[0], edges[-1]) if edges[0] <= tick <= edges[-1]] or [edges[0]]
    frame = _Frame((edges[0], edges[-1]), (0, y_ticks[-1]))
    marks = frame.axes(x_ticks, y_ticks, x_seconds=True, x_label="the last bar: the 99.9th percentile and above", y_label=counted)
    for index, count in enumerate(counts):
        if not count:
            continue
        left, right = frame.x(edges[index]), frame.x(edges[index + 1])
        top = frame.y(count)
        tip = f"{_seconds(edges[index])} – {_seconds(edges[index + 1])}: {count:,}"
        marks.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left - 1, 1):.1f}" height="{frame.y(0) - top:.1f}" fill="{COLORS["bars"]}">'
            f"<title>{html.escape(tip)}</title></rect>"
        )
    legend = []
    for name, color in _MARKERS:
        value = summary.get(name)
        if isinstance(value, (int, float)):
            x = frame.x(min(max(value, edges[0]), edges[-1]))
            marks.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{frame.y(0):.1f}" stroke="{color}" stroke-width="2" stroke-dasharray="4 3"/>')
            legend.append((f"{name} {_seconds(value)}", color))
    return _svg(title, marks, legend)


def _line_chart(title: str, xs: Sequence[float], series: Sequence[tuple[str, str, Sequence[float]]], *, y_label: str) -> str:
    """Lines over the seconds of the run."""
    high = max([max(values, default=0) for _, _, values in series] + [1])
    y_ticks = _ticks(0, high)
    x_ticks = _ticks(0, max(xs[-1] if xs else 1, 1))
    frame = _Frame((0, x_ticks[-1]), (0, y_ticks[-1]))
    marks = frame.axes(x_ticks, y_ticks, x_seconds=False, x_label="second of the run", y_label=y_label)
    for label, color, values in series:
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(xs, values, strict=True))
        if points:
            marks.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"><title>{html.escape(label)}</title></polyline>')
    return _svg(title, marks, [(label, color) for label, color, _ in series])
