"""Figures that fault tests measure, written into docs/reliability.md after the run.

A test asks for the `reliability_figures` fixture and calls
``reliability_figures.record("broker killed mid-stream", runs=1, scans_sent=10000, ...)``.
At the end of the session the figures of this run replace that test's row in
`docs/reliability-figures.json`, and the table at the end of `docs/reliability.md`
is rendered again from that file. Nobody types a figure: a row says when it was
measured, and a test not run this time keeps its last measured row.
"""

from __future__ import annotations

import json
import platform
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "FiguresRecorder", "render_table"]

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIGURES_JSON = DOCS / "reliability-figures.json"
RELIABILITY_MD = DOCS / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

COLUMNS = [
    ("runs", "runs"),
    ("faults_injected", "faults injected"),
    ("scans_sent", "scans sent"),
    ("scans_stored", "scans stored"),
    ("lost", "lost"),
    ("duplicates_absorbed", "duplicates absorbed"),
    ("bad_inputs_tried", "bad inputs tried"),
    ("bad_inputs_refused", "bad inputs refused"),
    ("seconds", "seconds"),
]


class FiguresRecorder:
    """Collects the figures of one test session."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def record(self, test_name: str, **figures: int | float | str) -> None:
        row = self.rows.setdefault(test_name, {})
        row.update(figures)

    def write(self) -> None:
        if not self.rows:
            return
        try:
            saved: dict[str, Any] = json.loads(FIGURES_JSON.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        measured_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.machine()}, {platform.python_version()}"
        for name, figures in self.rows.items():
            saved[name] = {**figures, "measured_at": measured_at, "machine": machine}
        FIGURES_JSON.write_text(
            json.dumps(saved, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if RELIABILITY_MD.exists():
            text = RELIABILITY_MD.read_text(encoding="utf-8")
            pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
            table = f"{START}\n{render_table(saved)}\n{END}"
            RELIABILITY_MD.write_text(pattern.sub(lambda _: table, text), encoding="utf-8")


def render_table(saved: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of every saved row, with the extra figures in a last column."""
    known = {key for key, _ in COLUMNS} | {"measured_at", "machine"}
    head = ["test", *(title for _, title in COLUMNS), "other figures", "measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(saved):
        row = saved[name]
        cells = [name, *(_cell(row.get(key)) for key, _ in COLUMNS)]
        extra = ", ".join(f"{k} {_cell(v)}" for k, v in sorted(row.items()) if k not in known)
        cells += [extra or "", str(row.get("measured_at", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
