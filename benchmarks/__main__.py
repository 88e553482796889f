"""``python -m benchmarks [--quick] [--only NAME ...] [--out DIR]``: run, then write the report.

Writes ``benchmarks.md`` (a table per subject: figure, value, baseline from the same
run, ratio, goal, met?) and ``benchmarks.json`` (every raw number) into ``--out``
(default: the repository's ``docs/``). ``--quick`` takes small samples for
development; its report says so and is not for quoting.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    bench_decode,
    bench_degraded,
    bench_hub_ingest,
    bench_ingest_floor,
    bench_journal,
    bench_latency,
    bench_photos,
    bench_replication,
    bench_rss,
    bench_trace,
    tracedata,
)
from benchmarks.report import Figure, Result, load_average, machine, write_report

ROOT = Path(__file__).resolve().parents[1]

Runner = Callable[[bool, Path, argparse.Namespace], Result]

# name -> (subject heading, how to run it); in report order.
BENCHES: dict[str, tuple[str, Runner]] = {
    "decode": (bench_decode.SUBJECT, lambda quick, tmp, a: bench_decode.run(quick)),
    "degraded": (bench_degraded.SUBJECT, lambda quick, tmp, a: bench_degraded.run(quick)),
    "photos": (bench_photos.SUBJECT, lambda quick, tmp, a: bench_photos.run(quick)),
    "latency": (bench_latency.SUBJECT, lambda quick, tmp, a: bench_latency.run(quick, tmp)),
    "journal": (bench_journal.SUBJECT, lambda quick, tmp, a: bench_journal.run(quick, tmp)),
    "rss": (bench_rss.SUBJECT, lambda quick, tmp, a: bench_rss.run(quick, tmp)),
    "hub-ingest": (
        bench_hub_ingest.SUBJECT,
        lambda quick, tmp, a: bench_hub_ingest.run(quick, tmp),
    ),
    "ingest-floor": (
        bench_ingest_floor.SUBJECT,
        lambda quick, tmp, a: bench_ingest_floor.run(
            quick, tmp, scale=a.trace_scale, cache=a.cache
        ),
    ),
    "replication": (
        bench_replication.SUBJECT,
        lambda quick, tmp, a: bench_replication.run(quick, tmp),
    ),
    "trace": (
        bench_trace.SUBJECT,
        lambda quick, tmp, a: bench_trace.run(quick, tmp, scale=a.trace_scale, cache=a.cache),
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small samples (development)")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHES), help="run only this (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the report goes")
    parser.add_argument(
        "--tmp",
        type=Path,
        default=None,
        help="folder for journals and frames (default: the system's; must be a real disk:"
        " fsync on tmpfs costs nothing)",
    )
    parser.add_argument(
        "--trace-scale",
        type=float,
        default=1.0,
        help="the trace data set's size as a share of the issue's 5 000 000 scans (default 1)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=tracedata.CACHE,
        help="where generated trace data sets are kept between runs (default"
        " benchmarks/.cache; elsewhere, their PostgreSQL copies are dropped after the run)",
    )
    args = parser.parse_args(argv)
    # The unit's rooms log at INFO on every scan; thousands of lines would drown the progress.
    logging.basicConfig(level=logging.WARNING)
    tmp = args.tmp or Path(tempfile.gettempdir())
    chosen = args.only or list(BENCHES)
    info = machine(tmp)
    info["load_start"] = load_average()
    started = time.monotonic()
    figures: list[Figure] = []
    raw = {}
    sections = {}
    timings: dict[str, float] = {}
    for name in chosen:
        subject, bench = BENCHES[name]
        print(f"benchmark {name}...", flush=True)
        begun = time.monotonic()
        result = bench(args.quick, tmp, args)
        timings[subject] = time.monotonic() - begun
        print(f"  {timings[subject]:.0f} s", flush=True)
        figures += result.figures
        raw[name] = result.raw
        sections[subject] = result.text
    info["load_end"] = load_average()
    md, js = write_report(
        args.out,
        figures=figures,
        raw=raw,
        machine_info=info,
        sections=sections,
        quick=args.quick,
        seconds=time.monotonic() - started,
        timings=timings,
    )
    missed = [f for f in figures if f.met is False]
    print(f"wrote {md} and {js}; {len(missed)} goal(s) missed", flush=True)
    for f in missed:
        print(f"  missed: {f.name}: {f.value:.3g} {f.unit} (goal {f.goal})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
