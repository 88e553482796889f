"""What every benchmark shares: timing with warm-up, a figure row, the machine, the report.

Timing is round-robin: each repetition runs every candidate once, in a shuffled
order, so a burst of load from another process on this shared 2-core machine hits
the candidate and its baseline alike, and their ratio stays meaningful even when
absolute times move.

    >>> samples = compare({"a": f, "b": g}, warmup=5, repeats=100)   # doctest: +SKIP
    >>> samples["a"].median_ms / samples["b"].median_ms
"""

from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Figure",
    "Result",
    "Samples",
    "compare",
    "machine",
    "load_average",
    "percentile",
    "render_scaling",
    "write_report",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Samples:
    """Durations of repeated runs of one thing, in nanoseconds."""

    ns: tuple[int, ...]

    @property
    def median_ms(self) -> float:
        return percentile(self.ns, 50) / 1e6

    @property
    def p95_ms(self) -> float:
        return percentile(self.ns, 95) / 1e6

    @property
    def p99_ms(self) -> float:
        return percentile(self.ns, 99) / 1e6

    def summary(self) -> dict[str, float]:
        """The numbers kept in the raw JSON (milliseconds)."""
        return {
            "n": len(self.ns),
            "median_ms": self.median_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "min_ms": min(self.ns) / 1e6,
            "max_ms": max(self.ns) / 1e6,
        }


def compare(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    min_repeats: int = 10,
) -> dict[str, Samples]:
    """Time each candidate `repeats` times, interleaved, after `warmup` untimed rounds.

    With `budget_s`, fewer repeats (never under `min_repeats`) are run when the warm-up
    rounds show that `repeats` would take longer: a slow baseline (a 0.5 s bare call)
    must not make the whole run last an hour.
    """
    clock = time.perf_counter_ns
    started = clock()
    for _ in range(warmup):
        for run in candidates.values():
            run()
    if budget_s is not None and warmup:
        round_s = (clock() - started) / 1e9 / warmup
        repeats = max(min_repeats, min(repeats, int(budget_s / max(round_s, 1e-9))))
    times: dict[str, list[int]] = {name: [] for name in candidates}
    # A new order each round: a candidate that always ran right after another would
    # always find the caches as that one left them (cold after zbar, warm after zxing).
    order = list(candidates)
    shuffle = random.Random(len(order)).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            run = candidates[name]
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: Samples(tuple(ns)) for name, ns in times.items()}


@dataclass
class Figure:
    """One row of the report: a measured value, its baseline from the same run, a goal.

    `ratio` is value / baseline. `met` is None where the issue sets no goal for this
    row (context figures); `note` says what was measured or why a goal is missed.
    `floor` is the least the same answer can cost, measured in the same run (the best
    set-based SQL inside the database, for the trace); `floor_ratio` is value / floor,
    how far the figure is from it. A section with floors gets two more columns.
    """

    subject: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""
    floor: float | None = None
    floor_name: str = ""
    ratio: float | None = field(init=False, default=None)
    floor_ratio: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.baseline:
            self.ratio = self.value / self.baseline
        if self.floor:
            self.floor_ratio = self.value / self.floor


@dataclass
class Result:
    """What one benchmark module hands back: its rows, its raw numbers, its prose."""

    figures: list[Figure]
    raw: dict[str, Any]
    text: str


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _filesystem_of(path: Path) -> str:
    """The file system type holding `path` (fsync cost depends on it: tmpfs makes it free)."""
    best, kind = "", "unknown"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    except (OSError, IndexError):
        pass
    return f"{kind} ({best or '?'})"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _libzbar_version() -> str:
    """The libzbar that pyzbar loads, from its own version call (the C library, not pyzbar)."""
    try:
        import ctypes

        from pyzbar import zbar_library

        libzbar, _ = zbar_library.load()
        # zbar >= 0.23 writes three numbers (major, minor, patch); an older one ignores
        # the third pointer. Passing two would let 0.23 write through a stray pointer.
        parts = [ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()]
        libzbar.zbar_version(*(ctypes.byref(p) for p in parts))
        return ".".join(str(p.value) for p in parts)
    except Exception as exc:  # a missing library is a fact to report, not a crash
        return f"unavailable ({exc})"


def machine(temp_dir: Path) -> dict[str, Any]:
    """What the figures were measured on (load averages are added by the runner)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib() or 0, 1),
        "os": f"{platform.system()} {platform.release()} ({platform.platform()})",
        "python": platform.python_version(),
        "temp_filesystem": _filesystem_of(temp_dir),
        "versions": {
            "zxing-cpp": _version("zxing-cpp"),
            "pyzbar": _version("pyzbar"),
            "libzbar": _libzbar_version(),
            "sqlite": sqlite3.sqlite_version,
            "tinydb": _version("tinydb"),
            "gpiozero": _version("gpiozero"),
            "numpy": _version("numpy"),
            "pillow": _version("pillow"),
            "segno": _version("segno"),
            **_versions_extra(),
        },
    }


# --- the report ------------------------------------------------------------------------

HUB_SUBJECTS = (
    "Hub ingest through Mosquitto",
    "Hub ingest against its floor",
    "Hub ingest with a synchronous standby",
    "Hub trace",
)
"""The hub's sections (bench_hub_ingest, bench_ingest_floor, bench_replication,
bench_trace); a run without them says so, and docs/scaling.md quotes them."""
SCALING_START, SCALING_END = "<!-- measured:start -->", "<!-- measured:end -->"


def render_scaling(text: str, figures: Sequence[Figure], when: str, quick: bool) -> str:
    """docs/scaling.md with its measured block (between `SCALING_START` and `SCALING_END`)
    written again from this run's hub figures; unchanged if it has no such block or the
    run measured no hub figure (a run of the unit's benchmarks leaves it as it was)."""
    rows = [f for subject in HUB_SUBJECTS for f in figures if f.subject == subject]
    if not rows or SCALING_START not in text or SCALING_END not in text:
        return text
    head, _, rest = text.partition(SCALING_START)
    _, _, tail = rest.partition(SCALING_END)
    kind = "QUICK, small samples, not for quoting" if quick else "full"
    block = [
        f"Written by `make bench` from its run of {when} ({kind}); do not edit by hand.",
        "Each figure's baseline and floor were measured in the same run;",
        "[benchmarks.md](benchmarks.md) says how, and gives the notes.",
        "",
        *_table(rows),
    ]
    return f"{head}{SCALING_START}\n" + "\n".join(block) + f"\n{SCALING_END}{tail}"


def _hub_not_run(sections: Mapping[str, str]) -> list[str]:
    missing = [s for s in HUB_SUBJECTS if s not in sections]
    if not missing:
        return []
    return [
        "## Hub: not in this run",
        "",
        "Not measured in this run (`--only` left them out): " + ", ".join(missing) + ".",
        "Nothing in this file speaks for them; `make bench` runs them.",
        "",
    ]


def _versions_extra() -> dict[str, str]:
    """Versions the hub figures depend on: the broker, the MQTT client, PostgreSQL."""
    import subprocess

    from doorscan.localbroker import find_mosquitto

    extra = {"paho-mqtt": _version("paho-mqtt"), "psycopg": _version("psycopg")}
    binary = find_mosquitto()
    if binary:
        try:
            # `mosquitto -h` prints its version on the first line and exits 3.
            head = subprocess.run(
                [binary, "-h"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.splitlines()
            extra["mosquitto"] = head[0].split()[-1] if head else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            extra["mosquitto"] = "unknown"
    try:
        import psycopg

        from benchmarks.tracedata import BENCH_PG

        with psycopg.connect(BENCH_PG.rsplit("/", 1)[0] + "/postgres", connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            extra["postgresql"] = str(row[0]) if row else "unknown"
    except Exception as exc:  # a database that is down is a fact to report, not a crash
        extra["postgresql"] = f"unavailable ({type(exc).__name__})"
    return extra


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value:.1f} %"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "–"}[met]


def _table(figures: Sequence[Figure]) -> list[str]:
    floors = any(f.floor_name for f in figures)
    lines = [
        "| figure | value | baseline (same run) | ratio | goal | met? |"
        + (" floor (same run) | × floor |" if floors else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if floors else ""),
    ]
    for f in figures:
        baseline = f"{_fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline_name else "–"
        # Three significant figures: a trace at 0.0035× of its brute force is not "0.00×".
        ratio = f"{f.ratio:.3g}×" if f.ratio is not None else "–"
        row = (
            f"| {f.name} | {_fmt(f.value, f.unit)} | {baseline} | {ratio} | {f.goal or '–'} "
            f"| {_met(f.met)} |"
        )
        if floors:
            floor = f"{_fmt(f.floor, f.unit)} ({f.floor_name})" if f.floor_name else "–"
            row += f" {floor} | {f'{f.floor_ratio:.3g}×' if f.floor_ratio is not None else '–'} |"
        lines.append(row)
    return lines


def write_report(
    out_dir: Path,
    *,
    figures: Sequence[Figure],
    raw: Mapping[str, Any],
    machine_info: Mapping[str, Any],
    sections: Mapping[str, str],
    quick: bool,
    seconds: float,
    timings: Mapping[str, float] | None = None,
) -> tuple[Path, Path]:
    """Write benchmarks.md (people) and benchmarks.json (numbers) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    m = machine_info
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmarks: the door unit and the hub",
        "",
        "Written by `make bench` (`python -m benchmarks`); do not edit by hand. Every figure",
        "stands next to its baseline measured in the same run, interleaved with it, so the",
        "ratio holds even when the shared machine is busy; absolute times move with the load.",
        "",
        f"Run {when}, {'QUICK (small samples, not for quoting)' if quick else 'full'}, "
        f"{seconds:.0f} s.",
        "",
        "## The machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB",
        f"- OS: {m['os']}; Python {m['python']}",
        f"- temp files (journals, TinyDB, the hub's SQLite files) on: {m['temp_filesystem']}",
        f"- versions: {versions}",
        f"- load average (1, 5, 15 min) at start: {_load(m['load_start'])}, at end:"
        f" {_load(m['load_end'])}"
        " (the machine is shared: above 2, other work competed for its 2 cores)",
        "",
        "## Summary",
        "",
    ]
    goals = [f for f in figures if f.met is not None]
    missed = [f for f in goals if f.met is False]
    lines.append(f"{len(goals) - len(missed)} of {len(goals)} goals met.")
    if missed:
        lines.append("Missed: " + "; ".join(f"{f.name} ({f.subject})" for f in missed) + ".")
    lines.append("")
    if timings:
        lines += [
            "Time per part: " + "; ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
            "",
        ]
    for subject, text in sections.items():
        rows = [f for f in figures if f.subject == subject]
        lines += [f"## {subject}", "", text.strip(), ""]
        if rows:
            lines += [*_table(rows), ""]
        notes = [f"- {f.name}: {f.note}" for f in rows if f.note]
        if notes:
            lines += ["Notes:", "", *notes, ""]
    lines += _hub_not_run(sections)
    md = out_dir / "benchmarks.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    scaling = out_dir / "scaling.md"
    if scaling.exists():
        before = scaling.read_text(encoding="utf-8")
        after = render_scaling(before, figures, when, quick)
        if after != before:
            scaling.write_text(after, encoding="utf-8")
    js = out_dir / "benchmarks.json"
    js.write_text(
        json.dumps(
            {
                "run_at": when,
                "quick": quick,
                "seconds": seconds,
                "timings_s": dict(timings or {}),
                "machine": dict(m),
                "figures": [asdict(f) for f in figures],
                "raw": dict(raw),
            },
            indent=1,
            ensure_ascii=False,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    return md, js
