"""`python -m benchmarks` writes its report: numbers in the JSON, a table in the Markdown.

Only that the benchmarks run and report is checked here, never a timing: figures are
for docs/benchmarks.md (`make bench`), and this machine is shared and noisy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_journal_benchmark_writes_a_report_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "report"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--only", "journal"]
    done = subprocess.run(
        [*command, "--out", str(out), "--tmp", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    figures = report["figures"]
    # One fsync floor and three rows per backlog (0, 10 000, 50 000).
    assert len(figures) == 1 + 3 * 3
    for figure in figures:
        assert figure["subject"] == "Journal commit"
        assert math.isfinite(figure["value"]) and figure["value"] > 0, figure
    with_baseline = [f for f in figures if f["baseline_name"]]
    assert with_baseline and all(f["baseline"] > 0 and f["ratio"] > 0 for f in with_baseline)
    assert {f["met"] for f in figures if f["goal"]} <= {True, False}
    assert report["machine"]["cores"] >= 1 and len(report["machine"]["load_end"]) == 3
    markdown = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "| figure | value | baseline (same run) | ratio | goal | met? |" in markdown
    assert "ScanJournal.record(), backlog 50,000, median" in markdown
    assert "Not measured yet" in markdown  # the hub's place is kept, and says so
    # Control: a subject that was not asked for is not in the report.
    assert "## Decode speed" not in markdown


def test_an_unknown_benchmark_is_refused_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "hub", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid choice: 'hub'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "benchmarks.md").exists()
