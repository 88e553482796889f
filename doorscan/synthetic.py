"""Synthetic Vietnamese people and their QR texts, for the demo, tests and benchmarks.

Every person is invented from a seed; numbers follow the CCCD scheme (province code,
century-and-sex digit, birth year) so the strict parsers accept them. Names and
addresses use the full range of Vietnamese diacritics and some minority names of
the Central Highlands, because those are what break decoders that guess charsets.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import segno
from PIL import Image

__all__ = ["Person", "make_people", "cccd_text", "health_text", "render_frame", "blank_frame"]

FAMILY = [
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Hoàng",
    "Huỳnh",
    "Phan",
    "Vũ",
    "Võ",
    "Đặng",
    "Bùi",
    "Đỗ",
    "Hồ",
    "Ngô",
    "Dương",
    "Lý",
    "Đinh",
    "Trịnh",
    "Đoàn",
    "Lương",
    "Kpă",
    "Rơ Châm",
    "Ksor",
    "Siu",
    "Rah Lan",
    "Nay",
    "Rơ Mah",
]
MIDDLE_MALE = ["Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành", "Công", "Xuân", "Đình", ""]
MIDDLE_FEMALE = ["Thị", "Ngọc", "Thu", "Kim", "Thùy", "Mỹ", "Bích", "Diễm", ""]
GIVEN_MALE = [
    "An",
    "Bình",
    "Cường",
    "Dũng",
    "Đạt",
    "Hải",
    "Hùng",
    "Khoa",
    "Lâm",
    "Long",
    "Nam",
    "Phúc",
    "Quân",
    "Sơn",
    "Thắng",
    "Trung",
    "Tuấn",
    "Việt",
    "Vĩnh",
    "Blới",
    "Hyưn",
]
GIVEN_FEMALE = [
    "Anh",
    "Châu",
    "Dung",
    "Giang",
    "Hà",
    "Hằng",
    "Hoa",
    "Hương",
    "Lan",
    "Linh",
    "Mai",
    "Ngân",
    "Nhung",
    "Oanh",
    "Phượng",
    "Quỳnh",
    "Thảo",
    "Trâm",
    "Yến",
    "H'Hen",
    "H'Lũy",
]
HAMLETS = ["Thôn 3", "Thôn Ia Rốt", "Làng Plei Ơi", "Tổ dân phố 7", "Buôn Ma Rừng", "Thôn Đồng Tâm"]
COMMUNES = [
    "Xã Ia Kha",
    "Xã Ia Dêr",
    "Phường Hội Thương",
    "Xã Chư Á",
    "Thị trấn Chư Ty",
    "Xã Đăk Đoa",
]
DISTRICTS = ["Huyện Ia Grai", "Thành phố Pleiku", "Huyện Chư Păh", "Huyện Đức Cơ", "Huyện Đăk Đoa"]


@dataclass(frozen=True)
class Person:
    id_number: str
    old_id: str
    name: str
    birth: date
    sex: str
    address: str
    issued: date
    qid: str

    @property
    def person_key(self) -> str:
        return f"id:{self.id_number}"


def make_people(count: int, seed: int = 0, province: str = "064") -> list[Person]:
    """`count` distinct invented people, the same for the same seed."""
    rng = random.Random(seed)
    people: list[Person] = []
    used: set[str] = set()
    while len(people) < count:
        female = rng.random() < 0.5
        birth = date(1935, 1, 1) + timedelta(days=rng.randrange(0, 365 * 70))
        century_digit = (birth.year // 100 - 19) * 2 + (1 if female else 0)
        id_number = f"{province}{century_digit}{birth.year % 100:02d}{rng.randrange(10**6):06d}"
        if id_number in used:
            continue
        used.add(id_number)
        middle = rng.choice(MIDDLE_FEMALE if female else MIDDLE_MALE)
        given = rng.choice(GIVEN_FEMALE if female else GIVEN_MALE)
        name = " ".join(p for p in (rng.choice(FAMILY), middle, given) if p)
        if rng.random() < 0.05:
            name = name.upper()
        address = ", ".join(
            (rng.choice(HAMLETS), rng.choice(COMMUNES), rng.choice(DISTRICTS), "Tỉnh Gia Lai")
        )
        issued = max(birth + timedelta(days=365 * 14), date(2021, 1, 1)) + timedelta(
            days=rng.randrange(0, 300)
        )
        old_id = "" if rng.random() < 0.4 else f"{rng.randrange(10**9):09d}"
        qid = f"{rng.getrandbits(64):016x}"
        people.append(
            Person(id_number, old_id, name, birth, "Nữ" if female else "Nam", address, issued, qid)
        )
    return people


def cccd_text(person: Person) -> str:
    """The QR text printed on the person's chip ID card."""
    return "|".join(
        (
            person.id_number,
            person.old_id,
            person.name,
            f"{person.birth:%d%m%Y}",
            person.sex,
            person.address,
            f"{person.issued:%d%m%Y}",
        )
    )


def health_text(person: Person, masked: bool = False) -> str:
    """The person's health QR (MIC v1.1 shape), name in upper case without diacritics."""
    import unicodedata

    plain = unicodedata.normalize("NFD", person.name.replace("Đ", "D").replace("đ", "d"))
    plain = "".join(c for c in plain if unicodedata.category(c) != "Mn").upper()
    doc = ("******" + person.id_number[6:]) if masked else person.id_number
    return f"{doc}|{plain}|{person.birth.isoformat()}|0|{person.qid}|"


def render_frame(
    text: str | bytes,
    *,
    size: tuple[int, int] = (640, 480),
    scale: int = 4,
    offset: tuple[int, int] | None = None,
    background: int = 150,
) -> np.ndarray:
    """A grey camera-like frame (H×W uint8) with the QR of `text` pasted on a grey wall.

    The code is rendered by segno at `scale` pixels per module with its quiet zone and
    placed at `offset` (default: centred), as a card held up to the camera would be.
    """
    buffer = io.BytesIO()
    # encoding="utf-8": segno would otherwise write text that fits Latin-1 as Latin-1.
    if isinstance(text, str):
        code_qr = segno.make(text, error="m", micro=False, encoding="utf-8")
    else:
        code_qr = segno.make(text, error="m", micro=False, mode="byte")
    code_qr.save(buffer, kind="png", scale=scale, border=4)
    code = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
    width, height = size
    if code.shape[0] > height or code.shape[1] > width:
        raise ValueError(
            f"a {code.shape[1]}×{code.shape[0]} code does not fit a {width}×{height} frame"
        )
    frame = np.full((height, width), background, dtype=np.uint8)
    if offset is None:
        offset = ((width - code.shape[1]) // 2, (height - code.shape[0]) // 2)
    x, y = offset
    frame[y : y + code.shape[0], x : x + code.shape[1]] = code
    return frame


def blank_frame(size: tuple[int, int] = (640, 480), background: int = 150) -> np.ndarray:
    """A frame with nothing to read: the door with nobody at it."""
    return np.full((size[1], size[0]), background, dtype=np.uint8)
