"""The trace page: an ID number, a scanned CCCD text or a name in, contacts by degree out.

A name search lists the matches to pick from (`AccessControlledStore.find_people`); a
USB scanner typing a CCCD QR text into the ID field is reduced to its number. A trace
reads identities and writes an audit entry, so it is a POST; so are its exports (the
result's export buttons post the same fields to /trace/export): an ID number or a
reason in a link would land in the browser's history and in logs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from doorscan.errors import Refusal
from doorscan.payloads import parse_qr
from doorscan.timefmt import from_ms
from hub.access import AccessControlledStore, PersonMatch, TraceQuestion
from hub.exports import ExportFormat, trace_download
from hub.trace import DEFAULT_DEPTH, DEFAULT_WINDOW, MAX_DEPTH, Contact, TracePage, TraceResult
from hub.web.api_models import MAX_WINDOW_MINUTES
from hub.web.deps import (
    access_for,
    get_now,
)
from hub.web.i18n import VN_TZ, Lang, format_time, t
from hub.web.pages_common import (
    guard,
    int_field,
    lang_of,
    period,
    render,
    venue_names,
)
from hub.web.svg import TimelineMark, timeline_svg

__all__ = ["TRACE_DAYS", "router", "subject_from_text"]

router = APIRouter(include_in_schema=False)

TRACE_DAYS = 14
"""Default trace period: the last 14 days, the incubation period tracers work with."""
_CITIZEN_NUMBER = re.compile(r"\d{12}|\d{9}")
_TOP = 5  # venues and hours named in each degree's counts line


# -- trace ------------------------------------------------------------------------------------


@dataclass
class TraceForm:
    subject: str = ""
    reason: str = ""
    since: str = ""
    until: str = ""
    window_minutes: str = str(DEFAULT_WINDOW // timedelta(minutes=1))
    depth: str = str(DEFAULT_DEPTH)
    page: str = "1"


def subject_from_text(text: str) -> str | None:
    """What the tracer typed or scanned, as an id for the trace; None means a name.

    A USB scanner types a whole card text (``064090123456||Nguyễn Văn An|...``) and
    Enter. It is parsed like at the door; when that fails the leading 12- or 9-digit
    number is still taken, because keyboard-wedge scanners often mangle the accented
    letters of the name while the digits come through. Text with a digit, or an
    ``id:``/``qid:``/``card:`` key, is an id; anything else (letters and spaces) is a
    name to search for.
    """
    value = text.strip()
    if "|" in value:
        try:
            return parse_qr(value).person_key
        except Refusal:
            first = value.split("|", 1)[0].strip()
            if _CITIZEN_NUMBER.fullmatch(first):
                return first
            raise
    if value.startswith(("id:", "qid:", "card:")) or any(c.isdigit() for c in value):
        return value
    return None


def _trace_defaults(now: datetime) -> TraceForm:
    today = now.astimezone(VN_TZ).date()
    return TraceForm(
        since=(today - timedelta(days=TRACE_DAYS - 1)).isoformat(), until=today.isoformat()
    )


@router.get("/trace", response_class=HTMLResponse)
def trace_page(request: Request) -> Response:
    user, refused = guard(request, "/trace")
    if refused is not None:
        return refused
    return render(
        request,
        "trace.html",
        user,
        "trace",
        form=_trace_defaults(get_now(request)),
        matches=None,
        result=None,
        max_depth=MAX_DEPTH,
        max_window=MAX_WINDOW_MINUTES,
    )


@router.post("/trace", response_class=HTMLResponse)
async def trace_submit(request: Request) -> Response:
    user, refused = guard(request, "/trace")
    if refused is not None:
        return refused
    assert user is not None  # _guard returned no refusal
    lang = lang_of(request)
    raw = await request.form()
    form = TraceForm(**{k: str(raw.get(k, "")) for k in TraceForm.__dataclass_fields__})
    reader = access_for(request, user)
    now = get_now(request)
    context: dict[str, Any] = {
        "form": form,
        "matches": None,
        "result": None,
        "max_depth": MAX_DEPTH,
        "max_window": MAX_WINDOW_MINUTES,
    }
    try:
        result = _trace_of_form(reader, form, now)
        if isinstance(result, list):
            return render(request, "trace.html", user, "trace", **{**context, "matches": result})
    except Refusal as refusal:
        return render(
            request,
            "trace.html",
            user,
            "trace",
            status=400,
            errors=[t("bad_input", lang, detail=refusal.reason)],
            **context,
        )
    form.subject = result.index.id_number  # a scanned card text is shown as its number
    names = venue_names(reader)
    return render(
        request,
        "trace.html",
        user,
        "trace",
        **{**context, **_result_context(result, form, names, lang)},
    )


def _asked(
    reader: AccessControlledStore, form: TraceForm, now: datetime
) -> TraceQuestion | list[PersonMatch]:
    """The trace the form asks for, or the people its name matches when not exactly one."""
    since, until = period(form.since, form.until)
    window_minutes = int_field(form.window_minutes, "window")
    if not 0 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise Refusal("bad_window", f"the window must be 0..{MAX_WINDOW_MINUTES} minutes")
    depth = int_field(form.depth, "depth")
    subject = subject_from_text(form.subject)
    if subject is None:
        matches = reader.find_people(form.subject, form.reason, now)
        if len(matches) != 1:
            return matches
        subject = matches[0].person_key
    return TraceQuestion(subject, since, until, timedelta(minutes=window_minutes), depth)


def _trace_of_form(
    reader: AccessControlledStore, form: TraceForm, now: datetime
) -> TraceResult | list[PersonMatch]:
    """One page of the trace the form asks for, or the people its name matches."""
    asked = _asked(reader, form, now)
    if isinstance(asked, list):
        return asked
    page = TracePage(int_field(form.page or "1", "page"))
    return reader.trace(asked, form.reason, now, page=page)


@router.post("/trace/export")
async def trace_export(request: Request) -> Response:
    """The result's CSV or XLSX: the trace run again from the posted fields, audited as
    ``export_trace`` (so an export is told apart from a look at the page)."""
    user, refused = guard(request, "/trace")
    if refused is not None:
        return refused
    assert user is not None
    raw = await request.form()
    form = TraceForm(**{k: str(raw.get(k, "")) for k in TraceForm.__dataclass_fields__})
    fmt: ExportFormat = "xlsx" if raw.get("format") == "xlsx" else "csv"
    reader = access_for(request, user)
    now = get_now(request)
    try:
        asked = _asked(reader, form, now)
        if isinstance(asked, list):
            raise Refusal("ambiguous_name", "the name matches more than one person: pick one")
        export = reader.trace_export(asked, form.reason, now)
    except Refusal as refusal:
        lang = lang_of(request)
        errors = [t("bad_input", lang, detail=refusal.reason)]
        return render(
            request,
            "trace.html",
            user,
            "trace",
            status=400,
            errors=errors,
            form=form,
            matches=None,
            result=None,
            max_depth=MAX_DEPTH,
            max_window=MAX_WINDOW_MINUTES,
        )
    return trace_download(fmt, export, reader.venue_names())


def _result_context(
    result: TraceResult, form: TraceForm, names: dict[str, str], lang: Lang
) -> dict[str, Any]:
    on_page: dict[int, list[Contact]] = defaultdict(list)
    for contact in result.contacts:
        on_page[contact.degree].append(contact)
    top_venues: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for degree, venue_id, count in result.summary.by_venue:  # most people first
        if len(top_venues[degree]) < _TOP:
            top_venues[degree].append((venue_id, count))
    hours: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    for degree, hour_ms, count in result.summary.by_hour:
        hours[degree].append((from_ms(hour_ms), count))
    top_hours = {d: sorted(h, key=lambda x: (-x[1], x[0]))[:_TOP] for d, h in hours.items()}
    size = result.page.size if result.page is not None else max(result.total, 1)
    people = {result.index.id_number: result.index.name or result.index.id_number}
    people.update({c.id_number: c.name or c.id_number for c in result.contacts})

    def venue_name(venue_id: str) -> str:
        return names.get(venue_id, venue_id)

    visits = [
        TimelineMark(v.venue_id, v.at, f"{venue_name(v.venue_id)} — {format_time(v.at, lang)}")
        for v in result.index.visits
    ]
    contacts = [
        TimelineMark(c.venue_id, c.exposed_at, f"{c.name} — {format_time(c.exposed_at, lang)}")
        for c in on_page.get(1, [])
    ]
    timeline = timeline_svg(
        visits,
        contacts,
        names,
        title=t("timeline", lang),
        lang=lang,
        legend=(t("timeline_visit", lang), t("timeline_contact", lang)),
    )
    return {
        "result": result,
        "on_page": on_page,
        "top_venues": top_venues,
        "top_hours": top_hours,
        "page": result.page.number if result.page is not None else 1,
        "pages": -(-result.total // size),
        "venue_name": venue_name,
        "via_name": lambda id_number: f"{people.get(id_number, id_number)} ({id_number})",
        "timeline": Markup(timeline) if result.index.visits else None,  # noqa: S704 escaped in svg.py
        # What the export buttons post again: the trace exactly as shown.
        "export_fields": {
            "subject": result.params.person_key,
            "reason": form.reason,
            "since": form.since,
            "until": form.until,
            "window_minutes": form.window_minutes.strip(),
            "depth": str(result.params.depth),
        },
    }
