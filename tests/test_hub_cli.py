"""`doorscan-hub` commands, called through `main()` on a real database file."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from doorscan.cards import CardSigner
from doorscan.payloads import Identity, parse_qr
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import UnitRecord, VenueRecord
from hub.cli import main
from hub.store import StoredScan
from tests.hubstore import open_store

TODAY = date(2022, 1, 15)
PEOPLE = make_people(4, seed=5)
A, B, C, D = (parse_qr(cccd_text(p), today=TODAY) for p in PEOPLE)
SIGNER = CardSigner.generate()
FORMULA = '=HYPERLINK("http://evil.example","Xem")'
CARD = parse_qr(
    SIGNER.issue(FORMULA, date(2021, 8, 1), card_id="7K3M9P2QXA"), card_keys=SIGNER.keyring()
)
T0 = datetime(2021, 8, 15, 3, 0, tzinfo=UTC)  # 10:00 in Gia Lai
SINCE, UNTIL = "2021-08-15T00:00:00+07:00", "2021-08-16T00:00:00+07:00"
BAD_PAYLOAD = b'{"v":1,"scans":[\x00\n\x1b[31m' + bytes([0xFF, 0xFE]) + b"Nguy\xe1\xbb\x85n" * 20


@pytest.fixture
def db(hub_db: str) -> str:
    minutes = timedelta(minutes=1)
    visits: list[tuple[Identity, str, datetime]] = [
        (A, "cho-pleiku", T0),
        (B, "cho-pleiku", T0 + 30 * minutes),  # F1
        (CARD, "cho-pleiku", T0 + 45 * minutes),  # F1, a card whose name is a formula
        (B, "benh-vien", T0 + 120 * minutes),
        (C, "benh-vien", T0 + 150 * minutes),  # F2 through B
        (D, "benh-vien", T0 - 600 * minutes),  # nobody's contact
    ]
    with open_store(hub_db) as store:
        store.upsert_venue(VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"))
        store.upsert_venue(VenueRecord(venue_id="benh-vien", name="Bệnh viện tỉnh"))
        store.upsert_unit(UnitRecord(unit_id="u1", venue_id="cho-pleiku"))
        store.insert_scans(
            [
                StoredScan(
                    f"scan-{n:06d}", "u1" if v == "cho-pleiku" else None, v, t, True, w, "mqtt"
                )
                for n, (w, v, t) in enumerate(visits)
            ],
            received_at=T0 + 600 * minutes,
        )
        store.add_dead_letter("mqtt", "doorscan/v1/units/u1/scans", BAD_PAYLOAD, "not_json",
                              "message is not JSON", T0)  # fmt: skip
    return hub_db


def trace_args(db: str, *extra: str) -> list[str]:
    return ["trace", "--db", db, "--id", A.id_number, "--since", SINCE, "--until", UNTIL, *extra]


def audit(db: str) -> list[tuple[str, str]]:
    with open_store(db) as store:
        return [(e.action, e.reason) for e in store.audit_entries()]


def test_trace_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(trace_args(db, "--reason", "ca F0 số 12", "--format", "json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"index", "summary", "total", "page", "contacts", "params"}
    assert (data["total"], data["page"]) == (3, None)  # the command names every contact
    assert data["summary"]["by_degree"] == {"1": 2, "2": 1}
    assert data["index"]["name"] == A.name and data["index"]["id_number"] == A.id_number
    assert data["index"]["visits"] == [{"venue_id": "cho-pleiku", "at": "2021-08-15T03:00:00.000Z"}]
    assert [(c["id_number"], c["degree"], c["exposed_at"], c["via"]) for c in data["contacts"]] == [
        (B.id_number, 1, "2021-08-15T03:30:00.000Z", A.id_number),
        ("7K3M9P2QXA", 1, "2021-08-15T03:45:00.000Z", A.id_number),
        (C.id_number, 2, "2021-08-15T05:30:00.000Z", B.id_number),
    ]
    assert all(
        set(c) == {"id_number", "name", "degree", "exposed_at", "venue_id", "via"}
        for c in data["contacts"]
    )
    assert data["params"]["window_minutes"] == 60 and data["params"]["depth"] == 2
    assert audit(db) == [("trace", "ca F0 số 12")]


def test_trace_table_is_aligned(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(trace_args(db, "--reason", "r", "--format", "table", "--depth", "1")) == 0
    out = capsys.readouterr().out
    assert f"Index (F0): {A.id_number}  {A.name}" in out
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("DEGREE")))
    rows = lines[header + 1 :]
    assert [row.split()[0] for row in rows] == ["F1", "F1"]  # depth 1: no F2
    # The via column starts at the same place on every row, whatever the names' lengths.
    assert len({row.rindex(A.id_number) for row in rows}) == 1
    assert lines[header].index("VIA") == rows[0].rindex(A.id_number)


def test_trace_csv_has_a_header_and_defuses_formulas(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(trace_args(db, "--reason", "r", "--format", "csv", "--window-minutes", "30")) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["id_number", "name", "degree", "exposed_at", "venue_id", "via"]
    # A 30-minute window still touches B (exactly 30 min) but not the card (45 min),
    # which is now an F2 through B (15 min after B).
    assert [(r[0], r[2]) for r in rows[1:]] == [
        (B.id_number, "1"),
        ("7K3M9P2QXA", "2"),
        (C.id_number, "2"),
    ]
    assert main(trace_args(db, "--reason", "r", "--format", "csv")) == 0
    card_row = next(
        r for r in csv.reader(io.StringIO(capsys.readouterr().out)) if r[0] == "7K3M9P2QXA"
    )
    assert card_row[1] == "'" + FORMULA


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--reason"),
        (["--reason", "   "], "give the reason"),
        (["--reason", "r", "--depth", "9"], "--depth"),
        (["--reason", "r", "--window-minutes", "-5"], "--window-minutes"),
        (["--reason", "r", "--format", "xlsx"], "--format"),
    ],
)
def test_trace_refuses_bad_arguments(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(trace_args(db, *args)) == 2
    assert message in capsys.readouterr().err
    assert audit(db) == []


def test_trace_refuses_bad_times_ids_and_databases(
    db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    no_offset = ["trace", "--db", db, "--id", A.id_number, "--since", "2021-08-15T00:00:00"]
    assert main([*no_offset, "--until", UNTIL, "--reason", "r"]) == 2
    assert "is not an ISO 8601 time with an offset" in capsys.readouterr().err
    backwards = ["trace", "--db", db, "--id", A.id_number, "--since", UNTIL, "--until", SINCE]
    assert main([*backwards, "--reason", "r"]) == 2
    assert "since is after until" in capsys.readouterr().err
    wrong_id = ["trace", "--db", db, "--id", "Nguyễn Văn An", "--since", SINCE, "--until", UNTIL]
    assert main([*wrong_id, "--reason", "r"]) == 2
    assert "is not a CCCD/CMND/passport number" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere.db")
    assert main(trace_args(missing, "--reason", "r")) == 2
    assert "no hub database" in capsys.readouterr().err
    assert not Path(missing).exists()
    assert audit(db) == []


def test_visitors(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["visitors", "--db", db, "--venue", "cho-pleiku", "--since", SINCE, "--until", UNTIL]
    assert main([*args, "--reason", "kiểm tra chợ", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(v["at"], v["name"], v["id_number"], v["kind"]) for v in data["visitors"]] == [
        ("2021-08-15T03:00:00.000Z", A.name, A.id_number, "cccd"),
        ("2021-08-15T03:30:00.000Z", B.name, B.id_number, "cccd"),
        ("2021-08-15T03:45:00.000Z", FORMULA, "7K3M9P2QXA", "card"),
    ]
    assert main([*args, "--reason", "r", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["at", "name", "id_number", "kind"] and rows[3][1] == "'" + FORMULA
    assert main([*args, "--reason", "r"]) == 0
    assert "3 check-ins at cho-pleiku" in capsys.readouterr().out
    assert audit(db) == [("visitors", "r"), ("visitors", "r"), ("visitors", "kiểm tra chợ")]
    assert main([*args]) == 2  # no reason
    unknown = ["visitors", "--db", db, "--venue", "nowhere", "--since", SINCE, "--until", UNTIL]
    assert main([*unknown, "--reason", "r"]) == 2
    assert "unknown venue" in capsys.readouterr().err


def test_dead_letters_are_escaped_and_truncated(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without a reason: what and why, the size, never the payload (it can hold an identity).
    assert main(["dead-letters", "--db", db, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 dead letters" in out and "not_json" in out and "message is not JSON" in out
    assert "Nguyễn" not in out and f"({len(BAD_PAYLOAD)} bytes)" in out
    assert main(["dead-letters", "--db", db, "--payloads"]) == 2  # no reason: refused
    capsys.readouterr()
    assert main(["dead-letters", "--db", db, "--payloads", "--reason", "unit u1 sends junk"]) == 0
    out = capsys.readouterr().out
    assert "\\x00\\n\\x1b[31m\\xff\\xfeNguyễn" in out
    assert f"… ({len(BAD_PAYLOAD)} bytes)" in out
    assert all(line.isprintable() for line in out.splitlines())


def test_stats(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "scans": 6,
        "people": 5,
        "venues": 2,
        "units": 1,
        "dead_letters": 1,
        "held": 0,
    }


def test_import_csv(db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = tmp_path / "cards.pub.pem"
    key.write_bytes(SIGNER.public_pem())
    card = SIGNER.issue("Ksor Blới", date(2021, 8, 1))
    path = tmp_path / "old.csv"
    path.write_text(
        "venue_id,scanned_at,qr_text\n"
        f'ben-xe,2021-10-01T08:00:00+07:00,"{cccd_text(PEOPLE[0])}"\n'
        f"cho-pleiku,2021-10-01T08:05:00+07:00,{card}\n"
        "cho-pleiku,2021-10-01T08:06:00,garbage\n",
        encoding="utf-8",
    )
    args = ["import-csv", "--db", db, str(path), "--card-key", str(key)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "3 rows, 1 loaded, 0 duplicates" in out
    assert "line 2: unknown venue ben-xe (use --add-venues)" in out
    assert "line 4: scanned_at '2021-10-01T08:06:00' has no UTC offset" in out
    assert main([*args, "--add-venues"]) == 1
    assert "3 rows, 1 loaded, 1 duplicates" in capsys.readouterr().out

    fixed = tmp_path / "fixed.csv"
    fixed.write_text("\n".join(path.read_text(encoding="utf-8").splitlines()[:3]), "utf-8")
    assert main(["import-csv", "--db", db, str(fixed), "--card-key", str(key)]) == 0
    assert "2 rows, 0 loaded, 2 duplicates (already stored), 0 errors" in capsys.readouterr().out

    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"venue_id,scanned_at,qr_text\ncho-pleiku,x,Jos\xe9\n")
    assert main(["import-csv", "--db", db, str(latin)]) == 1
    assert "not UTF-8: byte 0xe9 at byte offset 44 (line 2)" in capsys.readouterr().err
    assert main(["import-csv", "--db", db, str(latin), "--card-key", str(tmp_path)]) == 2


def test_python_dash_m_hub(db: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub", "stats", "--db", db],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scans"] == 6
    assert main(["--help"]) == 0


def test_audit_list_filters_and_names_the_operating_system_user(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(trace_args(db, "--reason", "ca F0 số 3")) == 0
    assert main(["dead-letters", "--db", db, "--payloads", "--reason", "unit u1 sends junk"]) == 0
    capsys.readouterr()
    assert main(["audit", "list", "--db", db, "--action", "trace"]) == 0
    traces = capsys.readouterr().out
    assert "1 audit entries" in traces and "ca F0 số 3" in traces  # the reason, opened
    assert A.id_number not in traces  # the subject by pseudonym only
    assert main(["audit", "list", "--db", db, "--action", "dead_letter_payloads"]) == 0
    payloads = capsys.readouterr().out
    assert "1 audit entries" in payloads and "unit u1 sends junk" in payloads
    assert '"account": "os:' in payloads and '"channel": "cli"' in payloads
    assert main(["audit", "list", "--db", db, "--account", "nobody"]) == 0
    assert "0 audit entries" in capsys.readouterr().out
    assert (
        main(
            [
                "audit",
                "list",
                "--db",
                db,
                "--since",
                "2000-01-01T00:00Z",
                "--until",
                "2000-01-02T00:00Z",
            ]
        )
        == 0
    )
    assert "0 audit entries" in capsys.readouterr().out


def test_tables_show_vietnam_time_and_utc_on_request_while_json_stays_utc(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A's visit at 03:00 UTC is 10:00 in Pleiku: what the person remembers of their day.
    assert main(trace_args(db, "--reason", "r")) == 0
    local = capsys.readouterr().out
    assert "2021-08-15T10:00:00.000+07:00" in local and "03:00:00.000Z" not in local
    assert main(trace_args(db, "--reason", "r", "--utc")) == 0
    assert "2021-08-15T03:00:00.000Z" in capsys.readouterr().out
    assert main(trace_args(db, "--reason", "r", "--format", "json")) == 0
    assert "2021-08-15T03:00:00.000Z" in capsys.readouterr().out
    visitors = ["visitors", "--db", db, "--venue", "cho-pleiku", "--since", SINCE]
    assert main([*visitors, "--until", UNTIL, "--reason", "r"]) == 0
    listed = capsys.readouterr().out
    assert "2021-08-15T00:00:00.000+07:00 .. 2021-08-16T00:00:00.000+07:00" in listed
    assert "2021-08-15T10:30:00.000+07:00" in listed
    assert main(["dead-letters", "--db", db]) == 0
    assert "+07:00" in capsys.readouterr().out
    assert main(["dead-letters", "--db", db, "--utc"]) == 0
    assert "+07:00" not in capsys.readouterr().out
