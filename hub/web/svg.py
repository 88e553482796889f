"""Pictures for the dashboard, drawn on the server as SVG: no chart library, no script.

Two kinds:

* `timeline_svg`: the index person's visits on a time axis, one row per venue, with
  the F1 contacts marked where they met (their exposure time, at that venue);
* `bar_chart_svg`: a count per day (scans per day), one bar each.

Every text that goes into the picture (a venue name comes from the registry, a label
from the catalogs) is escaped with `xml.sax.saxutils`, and the result is a standalone
well-formed SVG document that the pages embed inline. Times are drawn in Vietnam time,
like every time the dashboard shows.

    >>> svg = bar_chart_svg([(date(2021, 8, 15), 3)], title="Scans", lang="en")
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

from hub.web.i18n import VN_TZ, Lang, format_date

__all__ = ["TimelineMark", "bar_chart_svg", "timeline_svg"]

_SVG_NS = "http://www.w3.org/2000/svg"
_ROW_H = 28
_LABEL_W = 190
_PLOT_W = 560
_TOP = 34
_BOTTOM = 34
_MAX_LABEL_CHARS = 28
_KEY_X = _LABEL_W + 200


@dataclass(frozen=True)
class TimelineMark:
    """One point on the timeline: a venue row, a time, and the tooltip text."""

    venue_id: str
    at: datetime
    label: str


def _text(x: float, y: float, body: str, *, anchor: str = "start", cls: str = "") -> str:
    klass = f" class={quoteattr(cls)}" if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{escape(body)}</text>'


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL_CHARS else label[: _MAX_LABEL_CHARS - 1] + "…"


def _time_ticks(start: datetime, end: datetime) -> list[datetime]:
    """Round Vietnam-time ticks (hours or days) across [start, end], at most ~8."""
    span = end - start
    steps = [timedelta(hours=h) for h in (1, 2, 3, 6, 12, 24, 48, 168)]
    step = next((s for s in steps if span / s <= 8), steps[-1])
    local = start.astimezone(VN_TZ)
    if step >= timedelta(days=1):
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        first = local.replace(minute=0, second=0, microsecond=0)
    ticks = []
    tick = first
    while tick <= end:
        if tick >= start:
            ticks.append(tick)
        tick += step
    return ticks


def timeline_svg(
    visits: Sequence[TimelineMark],
    contacts: Sequence[TimelineMark],
    venue_names: Mapping[str, str],
    *,
    title: str,
    lang: Lang,
    legend: tuple[str, str] = ("visit", "contact"),
) -> str:
    """The index person's visits (filled circles) and F1 contacts (hollow diamonds).

    `legend` names the two marks (visit, contact) in the page's language.

    Rows are the venues of the visits, in order of first visit; a contact at a venue
    the person did not visit (it cannot happen for F1, but a caller may pass F2) gets
    its own row rather than being dropped. The x axis spans the marks plus a margin.
    """
    rows: list[str] = []
    for mark in [*visits, *contacts]:
        if mark.venue_id not in rows:
            rows.append(mark.venue_id)
    times = [m.at for m in (*visits, *contacts)]
    height = _TOP + _BOTTOM + _ROW_H * max(1, len(rows))
    width = _LABEL_W + _PLOT_W + 20
    parts = [
        f'<svg xmlns="{_SVG_NS}" class="chart timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        _text(4, 18, title, cls="title"),
        # The legend, right of the title: class "key" tells its marks from the data's.
        f'<circle class="visit key" cx="{_KEY_X}" cy="14" r="5"/>',
        _text(_KEY_X + 10, 18, legend[0], cls="legend"),
        f'<polygon class="contact key" points="{_KEY_X + 150},8 {_KEY_X + 156},14 '
        f'{_KEY_X + 150},20 {_KEY_X + 144},14"/>',
        _text(_KEY_X + 162, 18, legend[1], cls="legend"),
    ]
    if not times:
        parts.append("</svg>")
        return "".join(parts)
    start, end = min(times), max(times)
    margin = max((end - start) / 20, timedelta(minutes=30))
    start, end = start - margin, end + margin
    total = (end - start).total_seconds()

    def x_of(at: datetime) -> float:
        return _LABEL_W + _PLOT_W * (at - start).total_seconds() / total

    for i, venue_id in enumerate(rows):
        y = _TOP + _ROW_H * i + _ROW_H / 2
        parts.append(
            _text(
                _LABEL_W - 8,
                y + 4,
                _short(venue_names.get(venue_id, venue_id)),
                anchor="end",
                cls="row-label",
            )
        )
        parts.append(
            f'<line class="row" x1="{_LABEL_W}" y1="{y:.1f}" x2="{_LABEL_W + _PLOT_W}" '
            f'y2="{y:.1f}"/>'
        )
    axis_y = _TOP + _ROW_H * len(rows) + 4
    parts.append(
        f'<line class="axis" x1="{_LABEL_W}" y1="{axis_y}" x2="{_LABEL_W + _PLOT_W}" '
        f'y2="{axis_y}"/>'
    )
    day_first = timedelta(hours=24) <= (end - start)
    for tick in _time_ticks(start, end):
        x = x_of(tick)
        label = format_date(tick.date(), lang) if day_first and tick.hour == 0 else f"{tick:%H:%M}"
        parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}"/>'
        )
        parts.append(_text(x, axis_y + 18, label, anchor="middle", cls="tick-label"))
    for mark in visits:
        y = _TOP + _ROW_H * rows.index(mark.venue_id) + _ROW_H / 2
        parts.append(
            f'<circle class="visit" cx="{x_of(mark.at):.1f}" cy="{y:.1f}" r="6">'
            f"<title>{escape(mark.label)}</title></circle>"
        )
    for mark in contacts:
        x = x_of(mark.at)
        y = _TOP + _ROW_H * rows.index(mark.venue_id) + _ROW_H / 2
        points = f"{x:.1f},{y - 7:.1f} {x + 7:.1f},{y:.1f} {x:.1f},{y + 7:.1f} {x - 7:.1f},{y:.1f}"
        parts.append(
            f'<polygon class="contact" points="{points}">'
            f"<title>{escape(mark.label)}</title></polygon>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart_svg(counts: Sequence[tuple[date, int]], *, title: str, lang: Lang) -> str:
    """One bar per day, its count written above it; days as given (callers sort them).

    The bars share one scale from zero, so two charts side by side are not comparable
    and do not pretend to be: each chart's largest day is its full height.
    """
    n = max(1, len(counts))
    bar_w = max(6.0, min(48.0, 640 / n))
    plot_h = 160
    width = int(60 + bar_w * n + 20)
    height = _TOP + plot_h + 44
    top = max((c for _, c in counts), default=0)
    parts = [
        f'<svg xmlns="{_SVG_NS}" class="chart bars" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        _text(4, 18, title, cls="title"),
    ]
    base_y = _TOP + plot_h
    parts.append(f'<line class="axis" x1="50" y1="{base_y}" x2="{width - 10}" y2="{base_y}"/>')
    label_every = max(1, round(n / 10))  # keep day labels from overlapping
    for i, (day, count) in enumerate(counts):
        h = 0.0 if top == 0 else plot_h * count / top
        x = 60 + bar_w * i
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{base_y - h:.1f}" width="{bar_w * 0.8:.1f}" '
            f'height="{h:.1f}"><title>{escape(format_date(day, lang))}: {count}</title></rect>'
        )
        parts.append(
            _text(x + bar_w * 0.4, base_y - h - 4, str(count), anchor="middle", cls="count")
        )
        if i % label_every == 0:
            short = f"{day:%d/%m}" if lang == "vi" else f"{day:%m-%d}"
            parts.append(
                _text(x + bar_w * 0.4, base_y + 16, short, anchor="middle", cls="tick-label")
            )
    parts.append("</svg>")
    return "".join(parts)
