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
from typing import Any

from benchmarks.bench_trace import brute_force
from benchmarks.pgpair import find_pg_bin

ROOT = Path(__file__).resolve().parents[1]


def test_the_journal_benchmark_writes_a_report_with_numbers(tmp_path: Path) -> None:
    report, markdown = _run_quick(tmp_path, "journal")
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
    assert "| figure | value | baseline (same run) | ratio | goal | met? |" in markdown
    assert "ScanJournal.record(), backlog 50,000, median" in markdown
    assert "## Hub: not in this run" in markdown  # the hub's place is kept, and says so
    # Control: a subject that was not asked for is not in the report.
    assert "## Decode speed" not in markdown


def test_the_latency_benchmark_runs_on_todays_clock(tmp_path: Path) -> None:
    """The door's path on real code frames, visitor cards included: a card text that has
    expired by the day the benchmark runs (as one issued on a fixed date did) fails it."""
    report, _ = _run_quick(tmp_path, "latency")
    figures = report["figures"]
    assert figures and all(math.isfinite(f["value"]) for f in figures)


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


def _run_quick(tmp_path: Path, name: str, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "report"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--only", name, *extra]
    done = subprocess.run(
        [*command, "--out", str(out), "--tmp", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    return report, (out / "benchmarks.md").read_text(encoding="utf-8")


def test_the_hub_ingest_benchmark_measures_the_hub_against_the_broker(tmp_path: Path) -> None:
    report, markdown = _run_quick(tmp_path, "hub-ingest")
    figures = {f["name"]: f for f in report["figures"]}
    loopback = figures["bare subscriber, single-scan messages (loopback)"]
    single = figures["hub, single-scan messages, SQLite"]
    batched = figures["hub, 500-scan batches, SQLite"]
    for figure in (loopback, single, batched):
        assert math.isfinite(figure["value"]) and figure["value"] > 0, figure
    # The hub's rows stand next to the loopback rate measured in the same run, and the
    # single-scan row beside its floor: a subscriber that only answers and acks.
    assert single["baseline"] == loopback["value"] and single["ratio"] > 0
    assert single["met"] in (True, False) and single["floor"] > 0 and single["floor_ratio"] > 0
    assert batched["baseline"] > 0 and batched["met"] is None  # judged against its floor
    raw = report["raw"]["hub-ingest"]
    assert raw["single"]["scans"] == 100 and raw["batched"]["scans"] == 1000
    pg = raw["postgres"]
    if "scans_per_s" in pg:
        assert set(pg["scans_per_s"]) == {"1", "2"}
        assert figures["hub, 500-scan batches, PostgreSQL, 2 workers"]["met"] in (True, False)
    else:
        # Not measured must be said, with the reason, never left out silently.
        assert pg["missing"] and "PostgreSQL rows: **not measured in this run**" in markdown
    assert "## Hub ingest through Mosquitto" in markdown
    assert "## Hub trace" not in markdown and "Hub: not in this run" in markdown


def test_the_ingest_floor_benchmark_sets_the_hub_beside_its_floor(tmp_path: Path) -> None:
    """On an empty and on a loaded database, each backend: the hub's rate beside the rate
    of the least work that stores the same rows, from the same run."""
    report, markdown = _run_quick(tmp_path, "ingest-floor", "--cache", str(tmp_path / "cache"))
    rows = [f for f in report["figures"] if f["name"].startswith("hub, 500-scan batches")]
    assert {f["name"].split(", into ")[1] for f in rows} == {
        "empty database",
        "5,000 scans database",
    }
    for row in rows:
        assert row["value"] > 0 and row["floor"] > 0 and row["floor_ratio"] > 0, row
        # The goal is set on the loaded database only.
        assert (row["met"] is None) == row["name"].endswith("empty database"), row
    sizes = [f for f in report["figures"] if f["name"].startswith("stored size per scan")]
    assert sizes and all(f["value"] > 0 for f in sizes)
    assert "## Hub ingest against its floor" in markdown


def test_the_trace_benchmark_checks_the_engine_and_reuses_its_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    report, markdown = _run_quick(tmp_path, "trace", "--cache", str(cache))
    raw = report["raw"]["trace"]
    assert raw["spec"]["scans"] == 5000
    assert raw["sqlite"]["generation_s"] > 0  # generated in this run
    # The engine's answers were compared with the brute force's and found equal.
    assert raw["sqlite"]["checked_equal"] == 2
    assert len(raw["sqlite"]["f1_ms"]) == len(raw["sqlite"]["f2_ms"]) > 0
    # ... and with the floor SQL's, for every trace timed.
    assert raw["sqlite"]["floor_equal"] == len(raw["sqlite"]["f1_ms"]) * 2
    assert len(raw["sqlite"]["floor_f2_ms"]) == len(raw["sqlite"]["f2_ms"])
    p95 = [f for f in report["figures"] if "first page p95" in f["name"]]
    assert len(p95) == 4 and all(f["baseline"] > 0 and f["met"] in (True, False) for f in p95)
    # The export of an F2 (every contact named) is timed too, for the first people checked;
    # and both backends ran.
    assert len(raw["sqlite"]["export_f2_ms"]) == 2
    # Each engine figure stands beside its floor, and names its own sample count.
    assert all(f["floor"] > 0 and f["floor_ratio"] > 0 and ", n=" in f["name"] for f in p95)
    assert "| floor (same run) | × floor |" in markdown
    assert len(list(cache.glob("trace-*sqlite*/hub.db"))) == 1
    assert "## Hub trace" in markdown
    again, _ = _run_quick(tmp_path, "trace", "--cache", str(cache))
    assert again["raw"]["trace"]["sqlite"]["generation_s"] is None  # from the cache


def test_the_brute_force_trace_follows_the_exposure_rule() -> None:
    minute = 60_000
    rows = [
        ("v1", 0, "index"),
        ("v1", 30 * minute, "b"),  # F1, exposed at 30 min
        ("v2", -60 * minute, "b"),
        ("v2", -90 * minute, "c"),  # met b before b was exposed: not F2
        ("v3", 120 * minute, "b"),
        ("v3", 150 * minute, "e"),  # met b after: F2 at 150 min
        ("v3", 300 * minute, "far"),  # outside the window
    ]
    f1, f2 = brute_force(rows, "index", 60 * minute, 2)
    assert f1 == {"b": (1, 30 * minute)}
    assert f2 == {"b": (1, 30 * minute), "e": (2, 150 * minute)}


def test_the_replication_benchmark_sets_the_pair_beside_the_primary_alone(
    tmp_path: Path,
) -> None:
    report, markdown = _run_quick(tmp_path, "replication")
    assert "## Hub ingest with a synchronous standby" in markdown
    if find_pg_bin() is None:
        # Not measured must be said, with the reason, never left out silently.
        assert report["raw"]["replication"]["missing"] and "Not measured" in markdown
        return
    figures = {f["name"]: f for f in report["figures"]}
    for name in ("500-scan batches", "single-scan messages"):
        figure = figures[f"{name}, primary + synchronous standby"]
        assert math.isfinite(figure["value"]) and figure["value"] > 0, figure
        assert figure["baseline"] > 0 and figure["ratio"] > 0, figure
    raw = report["raw"]["replication"]
    assert raw["rounds"] == 2 and len(raw["scans_per_s"]["single"]["pair"]) == 2
