"""docs/scaling.md quotes the hub's figures only as `make bench` wrote them, from one run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.report import SCALING_END, SCALING_START, Figure, render_scaling

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _figure(subject: str, name: str, value: float) -> Figure:
    return Figure(subject, name, value, "scans/s", floor=2 * value, floor_name="the floor")


def test_the_measured_block_is_written_from_the_hub_figures_only() -> None:
    text = f"# Scaling\n\nprose\n{SCALING_START}\nold table\n{SCALING_END}\nmore prose\n"
    figures = [
        _figure("Hub ingest against its floor", "hub, batches", 1234.0),
        _figure("Decoding", "zxing-cpp", 99.0),
    ]
    written = render_scaling(text, figures, "2026-12-05 12:00 UTC", quick=False)
    assert "old table" not in written and "hub, batches | 1,234 scans/s" in written
    assert "zxing-cpp" not in written
    assert written.startswith("# Scaling\n\nprose\n") and written.endswith("more prose\n")
    # A run without hub figures (the unit's benchmarks alone) leaves the page as it was.
    assert render_scaling(text, figures[1:], "2026-12-05 12:00 UTC", quick=False) == text


def test_the_committed_page_quotes_the_committed_benchmark_run() -> None:
    """The block names the run docs/benchmarks.json holds, and every row it quotes is a
    figure of that run: nobody typed or kept a figure from another day."""
    page = (DOCS / "scaling.md").read_text(encoding="utf-8")
    assert SCALING_START in page and SCALING_END in page
    block = page.split(SCALING_START, 1)[1].split(SCALING_END, 1)[0]
    run = json.loads((DOCS / "benchmarks.json").read_text(encoding="utf-8"))
    assert f"from its run of {run['run_at']}" in block
    names = {figure["name"] for figure in run["figures"]}
    quoted = re.findall(r"^\| ([^|]+?) \| [0-9]", block, flags=re.M)
    assert quoted and set(quoted) <= names, set(quoted) - names
