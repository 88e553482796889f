"""CSV and XLSX exports that a spreadsheet cannot turn into formulas.

A name, an address or a venue comes from a QR code a stranger printed. Opened in a
spreadsheet, a text cell that starts with ``=``, ``+``, ``-`` or ``@`` is taken as a
formula (``=HYPERLINK(...)`` sends the sheet's contents away, ``=cmd|...`` ran programs
in older Excel), and a leading tab or carriage return hides such a start from a quick
look. Every text cell of every export goes through `neutralise`, which puts a ``'``
in front of such a value: spreadsheets show the text as it was and never evaluate it.
Numbers and times are written as numbers and times, so counts stay summable.

    >>> neutralise("=HYPERLINK(\"http://x\")"), neutralise("Nguyễn Văn An")
    ('\\'=HYPERLINK("http://x")', 'Nguyễn Văn An')

CSV files are UTF-8 with a byte-order mark, because Excel reads a CSV without one in
the machine's legacy code page and garbles every Vietnamese letter.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

__all__ = ["FORMULA_START", "Cell", "neutralise", "to_csv", "to_xlsx"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What a text cell may not start with (OWASP's list for CSV injection)."""

Cell = str | int | float | datetime | None


def neutralise(value: str) -> str:
    """`value`, prefixed with ``'`` when a spreadsheet would read it as a formula."""
    return "'" + value if value.startswith(FORMULA_START) else value


def _text_cell(value: Cell) -> Cell:
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        # Spreadsheets have no time zones; the header says which zone the column is in.
        return value.replace(tzinfo=None)
    return value


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> bytes:
    """The rows as a CSV file (UTF-8 with BOM, CRLF line ends as RFC 4180 asks)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([neutralise(h) for h in headers])
    for row in rows:
        writer.writerow(
            [
                "" if c is None else c.isoformat() if isinstance(c, datetime) else c
                for c in map(_text_cell, row)
            ]
        )
    return out.getvalue().encode("utf-8-sig")


def to_xlsx(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], sheet: str = "doorscan"
) -> bytes:
    """The rows as one worksheet of an XLSX workbook (openpyxl, streamed)."""
    book = Workbook(write_only=True)
    ws = book.create_sheet(title=sheet[:31])  # Excel's limit for a sheet name
    ws.append([neutralise(h) for h in headers])
    for row in rows:
        cells = []
        for value in map(_text_cell, row):
            cell = WriteOnlyCell(ws, value=value)
            if isinstance(value, str):
                # Typed as text, never as a formula, even where neutralise let it through.
                cell.data_type = "s"
            cells.append(cell)
        ws.append(cells)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
