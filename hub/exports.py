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
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Literal

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

from doorscan.timefmt import VIETNAM

if TYPE_CHECKING:
    from fastapi import Response

    from hub.trace import TraceExport

__all__ = [
    "FORMULA_START",
    "MEDIA",
    "TRACE_HEADERS",
    "Cell",
    "ExportFormat",
    "neutralise",
    "to_csv",
    "to_xlsx",
    "trace_download",
    "trace_rows",
]

_BOM = "\ufeff".encode()
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
    """The rows as a CSV file (UTF-8 with BOM, CRLF line ends as RFC 4180 asks).

    No `headers`, no header row (the continuation of a streamed file).
    """
    out = io.StringIO()
    writer = csv.writer(out)
    if headers:
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


# -- a trace as a file (the API's export and the dashboard's) ----------------------------------

ExportFormat = Literal["csv", "xlsx"]
TRACE_HEADERS = ("degree", "id_number", "name", "venue_id", "venue", "time (UTC+7)", "via")
MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def trace_rows(export: TraceExport, names: dict[str, str]) -> Iterator[list[Cell]]:
    """The index person's visits (degree 0), then every contact, times in Vietnam time.

    Contacts come as the export names them, batch by batch (`hub.trace.named_batches`).
    """
    index = export.finding.index
    for v in index.visits:
        yield [
            0,
            index.id_number,
            index.name or "",
            v.venue_id,
            names.get(v.venue_id, ""),
            v.at.astimezone(VIETNAM),
            "",
        ]
    for batch in export.batches:
        for c in batch:
            yield [
                c.degree,
                c.id_number,
                c.name,
                c.venue_id,
                names.get(c.venue_id, ""),
                c.exposed_at.astimezone(VIETNAM),
                c.via,
            ]


def _csv_chunks(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> Iterator[bytes]:
    """`to_csv`'s file, a few hundred rows at a time: the BOM and the header first."""
    rows = iter(rows)
    first = True
    while True:
        chunk = list(islice(rows, 500))
        if not chunk and not first:
            return
        text = to_csv(headers if first else (), chunk)
        yield text if first else text.removeprefix(_BOM)
        first = False


def trace_download(fmt: ExportFormat, export: TraceExport, names: dict[str, str]) -> Response:
    """The trace as an attachment: CSV (UTF-8 with BOM), streamed, or an XLSX workbook."""
    from fastapi import Response  # here: the CLI imports this module without the web stack
    from fastapi.responses import StreamingResponse

    headers = {
        "Content-Disposition": f'attachment; filename="trace.{fmt}"',
        "Cache-Control": "no-store",
    }
    rows = trace_rows(export, names)
    if fmt == "csv":
        return StreamingResponse(
            _csv_chunks(TRACE_HEADERS, rows), media_type=MEDIA[fmt], headers=headers
        )
    # A workbook is a zip whose index comes last: it is written whole (openpyxl's
    # write-only mode keeps it small in memory meanwhile).
    return Response(to_xlsx(TRACE_HEADERS, rows, "trace"), media_type=MEDIA[fmt], headers=headers)
