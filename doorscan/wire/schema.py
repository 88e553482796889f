"""The wire contract as JSON Schema (docs/schema/), and the tables of docs/wire.md.

The files are what a second implementation of a door unit or a hub reads; they are
made from the models (`doorscan.wire.messages`), never by hand, and a test fails when
the committed files and the models differ. The same goes for the tables of limits,
refusal codes and revisions in docs/wire.md. To write both again after a change::

    python -m doorscan.wire.schema docs

Each field added after revision 1 carries ``"since": N`` (its revision, see
`doorscan.wire.codec`). Limits that JSON Schema cannot state (a batch names each scan
id once; exactly one of ``qr_text`` and ``sealed``; no U+0000 in text) are in each
file's ``description`` and in docs/wire.md.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from doorscan.wire.codec import WIRE_REVISION, render_revisions
from doorscan.wire.codes import render_codes
from doorscan.wire.limits import render_limits
from doorscan.wire.messages import MESSAGES, SCHEMA_VERSION

__all__ = [
    "SCHEMA_DIR_NAME",
    "file_name",
    "json_schema",
    "render_all",
    "render_wire_md",
    "write_all",
]

SCHEMA_DIR_NAME = "schema"
_BASE = "https://doorscan.example/schema/v1/"


def file_name(model: type[BaseModel]) -> str:
    """``ScanBatch`` -> ``scan-batch.json``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", model.__name__).lower() + ".json"


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one message, as a reader validates it."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _BASE + file_name(model),
        **schema,
        "x-doorscan": {"version": SCHEMA_VERSION, "revision": WIRE_REVISION},
    }


def render_all() -> dict[str, str]:
    """File name -> text of every message's schema, as committed."""
    return {
        file_name(model): json.dumps(json_schema(model), indent=2, ensure_ascii=False) + "\n"
        for model in MESSAGES
    }


def render_wire_md(text: str) -> str:
    """docs/wire.md with its generated tables (between ``<!-- NAME:start -->`` and
    ``<!-- NAME:end -->``) rendered again from the code."""
    for name, table in (
        ("limits", render_limits()),
        ("codes", render_codes()),
        ("revisions", render_revisions()),
    ):
        pattern = re.compile(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->", re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/wire.md has no {name} table markers")
        # Split and joined, not re.sub: a table's backslashes are not a replacement pattern.
        head, _, rest = text.partition(f"<!-- {name}:start -->\n")
        _, _, tail = rest.partition(f"<!-- {name}:end -->")
        text = f"{head}<!-- {name}:start -->\n{table}\n<!-- {name}:end -->{tail}"
    return text


def write_all(docs: Path) -> list[Path]:
    """Write docs/schema/*.json and the tables of docs/wire.md; return what was written."""
    folder = docs / SCHEMA_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    wire_md = docs / "wire.md"
    wire_md.write_text(render_wire_md(wire_md.read_text(encoding="utf-8")), encoding="utf-8")
    return [*written, wire_md]


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)
