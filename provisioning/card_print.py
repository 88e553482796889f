"""A visitor card a person can carry: ID-1 size, Vietnamese, the signed QR and what it says.

`provisioning card` prints one card as PNG or PDF, or a sheet of cards (A4, 2 × 5 cards of
85.6 × 54 mm, cut lines drawn) from a CSV file. A card shows the holder's name, the card
number, the issuing office, the expiry date, the QR, and one line on what a door records
when it is shown and for how long. The QR is the signed text (`doorscan.cards`); everything
printed beside it is for people: a door reads only the QR.

    >>> image = card_image(PrintedCard(text, "Rơ Châm H'Hen", "7QK2M9XG4B",
    ...                    "Trung tâm Y tế Pleiku", date(2027, 12, 5)))   # doctest: +SKIP
    >>> save_cards([image], Path("card.pdf"))                               # doctest: +SKIP

Fonts: DejaVu Sans (Debian's ``fonts-dejavu-core``), which has every Vietnamese letter with
its marks; the Makefile installs it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

from doorscan.atomicfile import write_atomic

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "DPI",
    "FONT_DIR",
    "RETENTION_LINE",
    "PrintedCard",
    "card_image",
    "save_cards",
    "sheet_pages",
]

DPI = 300
MM = DPI / 25.4
CARD_W, CARD_H = round(85.6 * MM), round(54 * MM)  # ISO/IEC 7810 ID-1, like a CCCD
A4_W, A4_H = round(210 * MM), round(297 * MM)
SHEET_COLUMNS, SHEET_ROWS = 2, 5
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
QUIET_ZONE_MODULES = 4
RETENTION_LINE = (
    "Khi quét thẻ, cửa ghi tên, số thẻ, nơi và giờ vào; dữ liệu được giữ {days} ngày rồi xoá, "
    "chỉ ngành y tế được xem để truy vết."
)
"""What a door records and for how long (the hub's retention), in the holder's words."""
DEFAULT_RETENTION_DAYS = 28
"""The hub's default retention (`doorscan-hub purge`); a hub that keeps longer says so here."""


@dataclass(frozen=True)
class PrintedCard:
    """What is printed on one card: the QR text and, for people, the fields it carries."""

    text: str
    name: str
    card_id: str
    issuer: str
    expires: date
    retention_days: int = DEFAULT_RETENTION_DAYS


def _font(size_mm: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(FONT_DIR / name), round(size_mm * MM))


def _qr(text: str, side_px: int) -> Image.Image:
    """The QR at a whole number of pixels per module, no wider than `side_px`."""
    qr = segno.make(text, error="m", encoding="utf-8", micro=False)
    modules = int(qr.symbol_size(scale=1, border=QUIET_ZONE_MODULES)[0])
    scale = max(1, side_px // modules)
    image = Image.new("1", (modules, modules), 1)
    pixels = image.load()
    assert pixels is not None
    for y, row in enumerate(qr.matrix_iter(scale=1, border=QUIET_ZONE_MODULES)):
        for x, dark in enumerate(row):
            if dark:
                pixels[x, y] = 0
    return image.resize((modules * scale, modules * scale), Image.Resampling.NEAREST)


def card_image(card: PrintedCard) -> Image.Image:
    """One card at 300 dpi: QR on the left, the holder's details on the right."""
    image = Image.new("RGB", (CARD_W, CARD_H), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, CARD_W - 1, CARD_H - 1), outline=(170, 170, 170), width=2)
    margin = round(3 * MM)
    qr = _qr(card.text, round(46 * MM))
    image.paste(qr.convert("RGB"), (margin // 2, (CARD_H - qr.height) // 2))
    left = margin // 2 + qr.width + round(1 * MM)
    width_chars = 22
    y = margin
    draw.text((left, y), "THẺ KHÁCH RA VÀO", font=_font(3.0, bold=True), fill=(0, 70, 140))
    y += round(5 * MM)
    for line in textwrap.wrap(card.name, width=18)[:3]:
        draw.text((left, y), line, font=_font(3.4, bold=True), fill="black")
        y += round(4.4 * MM)
    y += round(1 * MM)
    issuer = textwrap.wrap(f"Nơi cấp: {card.issuer}", width=width_chars + 6)[:2]
    details = [
        f"Số thẻ: {card.card_id}",
        *(issuer if card.issuer.strip() else []),
        f"Hết hạn: {card.expires:%d/%m/%Y}",
    ]
    for line in details:
        draw.text((left, y), line, font=_font(2.4), fill="black")
        y += round(3.3 * MM)
    small = _font(1.6)
    lines = textwrap.wrap(RETENTION_LINE.format(days=card.retention_days), width=44)
    y = CARD_H - margin // 2 - len(lines) * round(2.1 * MM)
    for line in lines:
        draw.text((left, y), line, font=small, fill=(60, 60, 60))
        y += round(2.1 * MM)
    return image


def sheet_pages(cards: Sequence[Image.Image]) -> list[Image.Image]:
    """A4 pages of 2 × 5 cards, centred, with a thin cut line around each."""
    per_page = SHEET_COLUMNS * SHEET_ROWS
    pages = []
    left = (A4_W - SHEET_COLUMNS * CARD_W) // 2
    top = (A4_H - SHEET_ROWS * CARD_H) // 2
    for start in range(0, len(cards), per_page):
        page = Image.new("RGB", (A4_W, A4_H), "white")
        for n, card in enumerate(cards[start : start + per_page]):
            column, row = n % SHEET_COLUMNS, n // SHEET_COLUMNS
            page.paste(card, (left + column * CARD_W, top + row * CARD_H))
        pages.append(page)
    return pages


def save_cards(cards: Sequence[Image.Image], out: Path) -> int:
    """Write one card (PNG or PDF) or a sheet (PDF, pages of 10); return the pages written.

    Several cards go to a PDF only: a PNG holds one card.
    """
    suffix = out.suffix.lower()
    if suffix == ".png":
        if len(cards) != 1:
            raise ValueError("a PNG holds one card; write a sheet of cards as .pdf")
        pages = [cards[0]]
    elif suffix == ".pdf":
        pages = sheet_pages(cards) if len(cards) > 1 else [cards[0]]
    else:
        raise ValueError(f"{out}: a printed card is written as .png or .pdf")
    import io

    buffer = io.BytesIO()
    if suffix == ".png":
        pages[0].save(buffer, format="PNG", dpi=(DPI, DPI))
    else:
        pages[0].save(buffer, format="PDF", resolution=DPI, save_all=True, append_images=pages[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue())
    return len(pages)
