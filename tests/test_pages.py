"""The dashboard pages, through the real app on a real store (TestClient, no browser).

The data goes in the way a door's scans do: registry, statuses and scan batches through
the real `hub.ingest.Ingestor`, people from `doorscan.synthetic`. One venue's name and
district are HTML, as a stranger could register them: every page must show them as text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape as html_unescape
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from doorscan.errors import Refusal
from doorscan.synthetic import Person, cccd_text, make_people
from doorscan.wire import (
    Scan,
    ScanBatch,
    UnitRecord,
    UnitStatus,
    VenueRecord,
    encode_message,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
    topic_status,
)
from hub.access import Role
from hub.auth import create_user
from hub.ingest import Ingestor
from hub.namefold import fold
from hub.store import HubStore
from hub.store.base import StoredUser
from hub.web.app import create_app
from hub.web.deps import SESSION_COOKIE
from hub.web.i18n import CATALOGS, format_time, pick_lang, t
from hub.web.pages_trace import subject_from_text
from hub.web.svg import TimelineMark, bar_chart_svg, timeline_svg
from tests.hubstore import open_store

NOW = datetime(2022, 1, 10, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam
DAY = datetime(2022, 1, 8, 1, 0, tzinfo=UTC)  # 08:00 in Vietnam, two days earlier
PASSWORD = "một mật khẩu đủ dài"
XSS = "<script>alert(1)</script>"
PEOPLE = make_people(6, seed=11)
INDEX, F1, F2, ALONE = PEOPLE[0], PEOPLE[1], PEOPLE[2], PEOPLE[3]
# Someone else with exactly the index person's name: a name search must offer both.
NAMESAKE = dataclasses.replace(PEOPLE[4], name=INDEX.name)
USERS = {
    "tracer": (Role.TRACER, None),
    "venue": (Role.VENUE, "cho-pleiku"),
    "reporter": (Role.REPORTER, None),
    "admin": (Role.ADMIN, None),
}
VENUES = [
    VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku", district="Thành phố Pleiku"),
    VenueRecord(
        venue_id="bv-pleiku", name="Bệnh viện Đa khoa tỉnh Gia Lai", district="Thành phố Pleiku"
    ),
    VenueRecord(venue_id="xss", name=XSS, district=f"<b>{XSS}</b>"),
]
UNITS = {"door-cho": "cho-pleiku", "door-bv": "bv-pleiku", "door-xss": "xss"}
# (person, venue, time): INDEX meets F1 at the market, F1 meets F2 at the hospital later.
VISITS: list[tuple[Person, str, datetime]] = [
    (INDEX, "cho-pleiku", DAY),
    (F1, "cho-pleiku", DAY + timedelta(minutes=30)),
    (F1, "bv-pleiku", DAY + timedelta(hours=6)),
    (F2, "bv-pleiku", DAY + timedelta(hours=6, minutes=20)),
    (ALONE, "xss", DAY + timedelta(hours=1)),
    (NAMESAKE, "bv-pleiku", DAY - timedelta(days=1)),
]


def fill_store(store: HubStore, now: datetime = NOW) -> None:
    """Registry, statuses and visits (`fill_ingested`), and the users of `USERS`."""
    fill_ingested(store, now)
    for user_id, (role, own_venue) in USERS.items():
        create_user(store, user_id, f"Người dùng {user_id}", role, own_venue, PASSWORD, now)


def fill_ingested(store: HubStore, now: datetime = NOW) -> None:
    """Registry, one status per unit (door-xss never reported) and the visits, via ingest."""
    ingestor = Ingestor(store, now=lambda: now)
    for venue in VENUES:
        ingestor.handle(topic_registry_venue(venue.venue_id), encode_message(venue))
    for unit_id, venue_id in UNITS.items():
        record = UnitRecord(unit_id=unit_id, venue_id=venue_id)
        ingestor.handle(topic_registry_unit(unit_id), encode_message(record))
    for unit_id in ("door-cho", "door-bv"):
        status = UnitStatus(
            unit_id=unit_id, online=unit_id == "door-cho", at=now, software="1.4.2", backlog=0
        )
        ingestor.handle(topic_status(unit_id), encode_message(status))
    unit_of = {venue: unit for unit, venue in UNITS.items()}
    for i, (person, venue_id, at) in enumerate(VISITS):
        scan = Scan(
            scan_id=f"scan-{i:04d}", venue_id=venue_id, scanned_at=at, qr_text=cccd_text(person)
        )
        batch = ScanBatch(
            batch_id=f"batch-{i:04d}", unit_id=unit_of[venue_id], sent_at=at, scans=[scan]
        )
        [reply] = ingestor.handle(topic_scans(unit_of[venue_id]), encode_message(batch))
        assert b"scan-" in reply.payload
    assert store.counts()["scans"] == len(VISITS), store.dead_letters()


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> list[StoredUser]:
    """The users of `USERS` as the store keeps them, made once (scrypt is slow by design)."""
    with open_store(tmp_path_factory.mktemp("pages") / "hub.db") as opened:
        fill_store(opened)
        made = [opened.user(user_id) for user_id in USERS]
    assert None not in made
    return [user for user in made if user is not None]


@pytest.fixture
def store(hub_db: str, users: list[StoredUser]) -> Iterator[HubStore]:
    """A fresh store for each test: tests log in, trace and audit, so none shares one."""
    with open_store(hub_db) as opened:
        fill_ingested(opened)
        for user in users:
            opened.add_user(user)
        yield opened


@pytest.fixture
def client(store: HubStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, now=lambda: NOW), follow_redirects=False) as test_client:
        yield test_client


def log_in(client: TestClient, user_id: str) -> None:
    response = client.post("/login", data={"user_id": user_id, "password": PASSWORD})
    assert response.status_code == 303, response.text
    assert client.cookies.get(SESSION_COOKIE)


def trace_form(subject: str, **overrides: str) -> dict[str, str]:
    form = {
        "subject": subject,
        "reason": "ca bệnh số 12",
        "since": "2022-01-01",
        "until": "2022-01-10",
        "window_minutes": "60",
        "depth": "2",
    }
    return {**form, **overrides}


def parse_svg(svg: str) -> ElementTree.Element:
    """Our own server's SVG (xml.etree: no DTDs or entities in it to defuse)."""
    return ElementTree.fromstring(svg)  # noqa: S314 -- made by hub.web.svg, not received


def text_of(html: str) -> str:
    """The page's visible text, tags removed and entities decoded (H&#39;Hen is H'Hen).

    Assertions about names go through this: the raw HTML escapes an apostrophe, so
    ``name not in page.text`` would pass for a name that is on the page.
    """
    return re.sub(r"\s+", " ", html_unescape(re.sub(r"<[^>]+>", " ", html)))


# -- i18n ---------------------------------------------------------------------------------------


def test_both_catalogs_have_the_same_keys_and_no_empty_value() -> None:
    assert set(CATALOGS["vi"]) == set(CATALOGS["en"])
    for lang, catalog in CATALOGS.items():
        empty = [key for key, value in catalog.items() if not value.strip()]
        assert empty == [], f"{lang}: {empty}"
    # The catalogs are really two languages, not a copy.
    assert t("trace", "vi") == "Truy vết" and t("trace", "en") == "Trace"
    assert t("forbidden_title", "vi") == "Không được phép"
    same = [k for k in CATALOGS["vi"] if CATALOGS["vi"][k] == CATALOGS["en"][k]]
    assert len(same) < 8, same  # "F{n}", "—" and a few codes may coincide


def test_language_choice_and_vietnam_time() -> None:
    assert pick_lang(None, None) == "vi"
    assert pick_lang("en", "vi") == "en"
    assert pick_lang(None, "en") == "en"
    assert pick_lang("<x>", "fr") == "vi"
    assert (
        format_time(datetime(2021, 8, 15, 17, 30, tzinfo=UTC), "vi") == "16/08/2021 00:30 (UTC+7)"
    )
    assert (
        format_time(datetime(2021, 8, 15, 17, 30, tzinfo=UTC), "en") == "2021-08-16 00:30 (UTC+7)"
    )


# -- svg ----------------------------------------------------------------------------------------


def test_timeline_svg_parses_and_escapes_names() -> None:
    visits = [
        TimelineMark("a", DAY, "first"),
        TimelineMark("b", DAY + timedelta(hours=3), "second"),
    ]
    contacts = [TimelineMark("a", DAY + timedelta(minutes=30), XSS)]
    svg = timeline_svg(visits, contacts, {"a": XSS, "b": "Chợ & Bến"}, title="T <1>", lang="vi")
    root = parse_svg(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    circles = [c for c in root.findall("s:circle", ns) if c.get("class") == "visit"]
    diamonds = [p for p in root.findall("s:polygon", ns) if p.get("class") == "contact"]
    assert len(circles) == 2 and len(diamonds) == 1
    texts = [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")]
    assert XSS in texts and "Chợ & Bến" in texts and "T <1>" in texts  # text, not markup
    assert "<script" not in svg
    # The contact sits between the two visits on the x axis.
    xs = sorted(float(c.get("cx", "0")) for c in circles)
    contact_x = float(diamonds[0].get("points", "").split(",")[0])
    assert xs[0] < contact_x < xs[1]


def test_bar_chart_svg_scales_bars_to_counts() -> None:
    days = [(DAY.date() + timedelta(days=i), n) for i, n in enumerate([4, 0, 8])]
    root = parse_svg(bar_chart_svg(days, title="<b>", lang="en"))
    bars = root.findall("{http://www.w3.org/2000/svg}rect")
    heights = [float(b.get("height", "-1")) for b in bars]
    assert len(heights) == 3 and heights[1] == 0 and heights[2] == 2 * heights[0] > 0


# -- login, homes, 403 --------------------------------------------------------------------------


def test_unauthenticated_pages_redirect_to_login(client: TestClient) -> None:
    for path in ("/", "/trace", "/units", "/reports"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    page = client.get("/login")
    assert page.status_code == 200 and "Đăng nhập" in page.text and 'lang="vi"' in page.text


def test_login_sets_a_strict_http_only_cookie(client: TestClient) -> None:
    response = client.post("/login", data={"user_id": "tracer", "password": PASSWORD})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert f"{SESSION_COOKIE}=" in cookie
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


def test_failed_login_is_the_same_for_unknown_user_and_wrong_password(client: TestClient) -> None:
    wrong = client.post("/login", data={"user_id": "tracer", "password": "sai mật khẩu rồi"})
    unknown = client.post("/login", data={"user_id": "nobody", "password": PASSWORD})
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert t("login_failed", "vi") in response.text
        assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    # The message is the same; only the echoed user id differs.
    assert wrong.text.replace('value="tracer"', "") == unknown.text.replace('value="nobody"', "")
    assert client.get("/trace").status_code == 303  # still not logged in


@pytest.mark.parametrize(
    ("user_id", "home"),
    [("tracer", "/trace"), ("venue", "/reports"), ("reporter", "/reports"), ("admin", "/units")],
)
def test_each_role_lands_on_its_home(client: TestClient, user_id: str, home: str) -> None:
    log_in(client, user_id)
    response = client.get("/")
    assert response.status_code == 303 and response.headers["location"] == home
    assert client.get(home).status_code == 200


@pytest.mark.parametrize("user_id", ["venue", "reporter", "admin"])
def test_a_role_that_may_not_trace_gets_the_not_allowed_page(
    client: TestClient, store: HubStore, user_id: str
) -> None:
    log_in(client, user_id)
    page = client.get("/trace")
    assert page.status_code == 403
    assert "Không được phép" in page.text and 'id="forbidden"' in page.text
    before = store.counts()
    posted = client.post("/trace", data=trace_form(INDEX.id_number))
    assert posted.status_code == 403 and INDEX.name not in text_of(posted.text)
    assert store.counts() == before
    english = client.get("/trace?lang=en")
    assert english.status_code == 403 and "Not allowed" in english.text


def test_logout_revokes_the_session(client: TestClient) -> None:
    log_in(client, "admin")
    token = client.cookies.get(SESSION_COOKIE)
    response = client.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    client.cookies.set(SESSION_COOKIE, token or "")  # even a kept copy of the cookie is dead
    assert client.get("/units").status_code == 303


def test_a_post_from_another_origin_is_refused(client: TestClient, store: HubStore) -> None:
    log_in(client, "tracer")
    audit_before = len(store.audit_entries(1000))
    foreign = client.post(
        "/trace", data=trace_form(INDEX.id_number), headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and INDEX.name not in text_of(foreign.text)
    assert len(store.audit_entries(1000)) == audit_before
    # Control: the same request from our own origin goes through.
    own = client.post(
        "/trace", data=trace_form(INDEX.id_number), headers={"Origin": "http://testserver"}
    )
    assert own.status_code == 200 and F1.name in text_of(own.text)
    login_foreign = client.post(
        "/login",
        data={"user_id": "tracer", "password": PASSWORD},
        headers={"Origin": "null"},
    )
    assert login_foreign.status_code == 403
    by_referer = client.post(
        "/logout", headers={"Referer": "https://evil.example/page"}, follow_redirects=False
    )
    assert by_referer.status_code == 403
    assert client.get("/trace").status_code == 200  # the foreign logout did not log us out


@pytest.mark.parametrize(
    ("typed", "subject"),
    [
        ("064090123456", "064090123456"),
        ("  id:064090123456 ", "id:064090123456"),
        ("card:7K3M9P2QXA", "card:7K3M9P2QXA"),
        (cccd_text(INDEX), INDEX.person_key),
        ("nguyen van an", None),
        ("Rơ Châm H'Hen", None),
    ],
)
def test_what_the_id_field_means(typed: str, subject: str | None) -> None:
    assert subject_from_text(typed) == subject


def test_a_card_text_without_its_number_is_refused() -> None:
    with pytest.raises(Refusal):
        subject_from_text("not|a|card|at|all|really|no")


def test_login_next_is_only_a_local_path(client: TestClient) -> None:
    for target, expected in (("/units", "/units"), ("//evil.example/x", "/"), ("https://e.x", "/")):
        client.cookies.clear()
        response = client.post(
            "/login", data={"user_id": "admin", "password": PASSWORD, "next": target}
        )
        assert response.headers["location"] == expected


# -- language -----------------------------------------------------------------------------------


def test_language_switch_is_remembered_in_a_cookie(client: TestClient) -> None:
    log_in(client, "admin")
    vietnamese = client.get("/units")
    assert "Thiết bị" in vietnamese.text and "Đăng xuất" in vietnamese.text
    english = client.get("/units?lang=en")
    assert "Units" in english.text and "Log out" in english.text and 'lang="en"' in english.text
    assert "Đăng xuất" not in english.text
    assert client.cookies.get("lang") == "en"
    remembered = client.get("/reports")
    assert "Reports" in remembered.text and "Báo cáo" not in text_of(remembered.text).replace(
        "Tiếng Việt", ""
    )
    back = client.get("/reports?lang=vi")
    assert "Báo cáo" in back.text
    # The switch link keeps the page's query (a login's next= survives the switch).
    client.cookies.delete(SESSION_COOKIE)
    login_page = client.get("/login?next=%2Funits")
    assert 'href="/login?next=%2Funits&amp;lang=en"' in login_page.text


# -- trace --------------------------------------------------------------------------------------


def test_trace_by_number_shows_degrees_timeline_and_exports(
    client: TestClient, store: HubStore
) -> None:
    log_in(client, "tracer")
    audit_before = len(store.audit_entries(1000))
    page = client.post("/trace", data=trace_form(INDEX.id_number))
    assert page.status_code == 200, text_of(page.text)
    text = text_of(page.text)
    assert INDEX.name in text and F1.name in text and F2.name in text
    assert ALONE.name not in text and NAMESAKE.id_number not in text  # the control
    # F1 at the market 08:30, F2 through F1 at the hospital.
    assert "F1" in text and "F2" in text
    assert "08/01/2022 08:30 (UTC+7)" in text and "Chợ Pleiku" in text
    assert f"{F1.name} ({F1.id_number})" in text
    assert len(store.audit_entries(1000)) == audit_before + 1
    svg = re.search(r"<svg.*?</svg>", page.text, re.S)
    assert svg is not None
    parse_svg(svg.group(0))
    # The export buttons post the shown trace again (nothing identifying in a link).
    export_form = re.search(
        r'<form method="post" action="/trace/export".*?</form>', page.text, re.S
    )
    assert export_form is not None and "href=" not in export_form.group(0)
    fields = {
        html_unescape(name): html_unescape(value)
        for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', export_form.group(0))
    }
    fields["format"] = "csv"
    csv = client.post("/trace/export", data=fields)
    assert csv.status_code == 200 and F2.id_number in csv.content.decode("utf-8-sig")
    assert store.audit_entries(1)[0].action == "export_trace"


def test_a_large_trace_is_counted_in_full_and_named_a_page_at_a_time(
    client: TestClient, store: HubStore
) -> None:
    crowd = make_people(110, seed=12)[6:110]  # 104 more people at the market with INDEX
    ingestor = Ingestor(store, now=lambda: NOW)
    scans = [
        Scan(
            scan_id=f"crowd-{i:04d}",
            venue_id="cho-pleiku",
            scanned_at=DAY + timedelta(seconds=2 * i),  # one door's pace: no flood held
            qr_text=cccd_text(p),
        )
        for i, p in enumerate(crowd)
    ]
    for n in range(0, len(scans), 20):  # batches of a door's usual size
        batch = ScanBatch(
            batch_id=f"batch-crowd-{n}", unit_id="door-cho", sent_at=DAY, scans=scans[n : n + 20]
        )
        ingestor.handle(topic_scans("door-cho"), encode_message(batch))
    assert store.counts()["scans"] == len(VISITS) + len(crowd), store.dead_letters()
    log_in(client, "tracer")
    first = client.post("/trace", data=trace_form(INDEX.id_number))
    text = text_of(first.text)
    assert "F1 105 người" in text and "F2 1 người" in text, text
    assert "Nhiều nhất tại: Chợ Pleiku (105)" in text and "Trang 1/2" in text
    assert first.text.count("<tr><td>") == 100  # one page of named contacts
    one_form = r'<form method="post" action="/trace" class="inline">(?:(?!</form>).)*'
    next_form = re.search(one_form + r'id="page_next".*?</form>', first.text, re.S)
    assert next_form is not None and 'id="page_previous"' not in first.text
    fields = {
        html_unescape(name): html_unescape(value)
        for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', next_form.group(0))
    }
    second = client.post("/trace", data=fields)
    text = text_of(second.text)
    assert "Trang 2/2" in text and F2.name in text and 'id="page_next"' not in second.text
    assert second.text.count("<tr><td>") == 6  # the last 5 of the F1s, and the F2
    pages = [e.params.get("page") for e in store.audit_entries(2)]
    assert pages == [2, 1]  # newest first: each page read is audited


def test_trace_with_a_scanned_cccd_text_in_the_id_field(client: TestClient) -> None:
    log_in(client, "tracer")
    page = client.post("/trace", data=trace_form(cccd_text(INDEX)))
    assert page.status_code == 200
    assert F1.name in text_of(page.text) and f'value="{INDEX.id_number}"' in page.text
    # A scanner that garbled the accented name still gives the number.
    garbled = cccd_text(INDEX).replace(INDEX.name, "Nguy?n V?n")
    assert subject_from_text(garbled) == INDEX.id_number
    assert F1.name in text_of(client.post("/trace", data=trace_form(garbled)).text)


def test_trace_by_name_lists_namesakes_to_pick_from(client: TestClient) -> None:
    log_in(client, "tracer")
    typed = fold(INDEX.name)  # what a tracer without a Vietnamese keyboard types
    assert typed != INDEX.name  # the control: the search really ignores diacritics or case
    page = client.post("/trace", data=trace_form(typed))
    assert page.status_code == 200
    assert INDEX.id_number in page.text and NAMESAKE.id_number in page.text
    assert F1.name not in text_of(page.text)  # a list to pick from, not yet a trace
    picked = client.post("/trace", data=trace_form(INDEX.person_key))
    assert F1.name in text_of(picked.text)
    # A unique name goes straight to the trace.
    unique = client.post("/trace", data=trace_form(F2.name.lower()))
    assert unique.status_code == 200 and F1.name in text_of(unique.text)
    nobody = client.post("/trace", data=trace_form("Không Có Ai"))
    assert 'id="no-match"' in nobody.text


def test_trace_refusals_are_shown_on_the_form(client: TestClient) -> None:
    log_in(client, "tracer")
    no_reason = client.post("/trace", data=trace_form(INDEX.id_number, reason=" "))
    assert no_reason.status_code == 400 and 'class="error"' in no_reason.text
    bad_date = client.post("/trace", data=trace_form(INDEX.id_number, since="hôm qua"))
    assert bad_date.status_code == 400 and F1.name not in text_of(bad_date.text)


# -- escaping -----------------------------------------------------------------------------------


def test_names_from_strangers_are_escaped_everywhere(client: TestClient) -> None:
    log_in(client, "tracer")
    for page in (
        client.get("/units"),
        client.get("/reports", params={"since": "2022-01-01", "until": "2022-01-10", "days": "1"}),
        client.post("/trace", data=trace_form(ALONE.id_number)),
        client.post("/trace", data=trace_form(XSS)),  # reflected in the form and the error
    ):
        assert page.status_code in (200, 400)
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# -- units and reports --------------------------------------------------------------------------


def test_units_page_highlights_silent_units(client: TestClient) -> None:
    log_in(client, "admin")
    page = client.get("/units").text
    rows = {
        m.group(2): m.group(1)
        for m in re.finditer(r"<tr( class=\"silent\")?>\s*<td>([\w-]+)", page)
    }
    # door-cho is online, door-bv reported offline just now (not yet silent), door-xss never.
    assert rows == {"door-cho": None, "door-bv": None, "door-xss": ' class="silent"'}
    assert "1.4.2" in page and "Trực tuyến" in page and "Mất kết nối" in page


def test_units_page_for_a_venue_shows_its_own_units_only(client: TestClient) -> None:
    log_in(client, "venue")
    page = client.get("/units").text
    assert "door-cho" in page and "door-bv" not in page and "door-xss" not in page


def test_reports_page_counts_charts_and_quiet_venues(client: TestClient) -> None:
    log_in(client, "reporter")
    page = client.get(
        "/reports", params={"since": "2022-01-05", "until": "2022-01-10", "days": "1"}
    )
    assert page.status_code == 200
    svg = re.search(r"<svg.*?</svg>", page.text, re.S)
    assert svg is not None
    bars = parse_svg(svg.group(0)).findall("{http://www.w3.org/2000/svg}rect")
    assert len(bars) == 6  # one per day, 5..10 January
    text = text_of(page.text)
    assert "Thành phố Pleiku" in text and "Chợ Pleiku" in text
    # Every venue was last scanned on the 8th or before: all quiet over 1 day.
    assert "Không có địa điểm nào im lặng" not in text
    assert "door-bv" in text and "door-xss" in text  # offline units listed
    assert INDEX.name not in text  # counts only
    link = re.search(r'href="(/api/v1/exports/usage\.csv\?[^"]*by=district[^"]*)"', page.text)
    assert link is not None
    export = client.get(html_unescape(link.group(1)))
    assert export.status_code == 200, export.text
    assert "Thành phố Pleiku" in export.content.decode("utf-8-sig")


def test_reports_page_for_a_venue_owner_counts_its_venue_only(client: TestClient) -> None:
    log_in(client, "venue")
    text = text_of(
        client.get("/reports", params={"since": "2022-01-05", "until": "2022-01-10"}).text
    )
    assert "Chợ Pleiku" in text and "Bệnh viện" not in text
