"""Memory of a real unit process while it scans: ``python -m device run`` on a looping folder.

The unit runs as in production but for its two edges: frames come from a folder of
1280×720 PNGs (``frames.source = files``, ``loop = true``; a few show a code, most an
empty doorway) and the pins are gpiozero's mock (``GPIOZERO_PIN_FACTORY=mock``). A
private Mosquitto is started for it when one is installed, so the MQTT sync is
connected as at a real door. VmRSS is read from ``/proc/PID/status`` every 0.1 s;
*steady* is the median over the second half of the run, *peak* the largest sample
(VmHWM, the kernel's own peak, is in benchmarks.json). MB are 10^6 bytes.

Baseline: the RSS of a bare Python that imported numpy and zxing-cpp, measured in
the same run. Goal: ≤ 80 MB while scanning at 15 frames/s.

The ``files`` frame source is paced to ``frames.fps`` (``frames.pace``), as a camera
would deliver frames; the frame rate the unit reached is reported beside the memory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.report import Figure, Result, percentile
from benchmarks.scenes import code_frame, code_texts, doorway_frame
from doorscan.localbroker import LocalBroker, find_mosquitto

__all__ = ["run"]

SUBJECT = "Unit memory"
ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 80.0
SIZE = (1280, 720)
_BARE = (
    "import re, numpy, zxingcpp\n"
    "text = open('/proc/self/status').read()\n"
    "print(re.search(r'^VmRSS:\\s+(\\d+) kB', text, re.M).group(1))\n"
)


def _vm_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def _frames(folder: Path) -> None:
    """5 code frames among 30: a door mostly sees nobody."""
    folder.mkdir()
    texts = code_texts(5, seed=99)
    for i in range(30):
        frame = code_frame(texts[i // 6][1], SIZE) if i % 6 == 0 else doorway_frame(SIZE, seed=i)
        Image.fromarray(frame).save(folder / f"{i:02d}.png")


def _bare_rss_kib() -> int:
    done = subprocess.run(
        [sys.executable, "-c", _BARE], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout.strip())


def run(quick: bool, tmp: Path) -> Result:
    duration_s = 6.0 if quick else 30.0
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp)))
        _frames(folder / "frames")
        broker_note = "no Mosquitto installed: the unit ran offline, reconnecting"
        broker: dict[str, Any] = {"host": "127.0.0.1", "port": 1}
        if find_mosquitto() is not None:
            local = stack.enter_context(LocalBroker())
            broker = {"host": local.host, "port": local.port}
            broker_note = "connected to a private Mosquitto"
        config = folder / "unit.json"
        config.write_text(
            json.dumps(
                {
                    "unit_id": "bench-door",
                    "venue_id": "bench-venue",
                    "data_dir": "data",
                    "broker": broker,
                    "frames": {
                        "source": "files",
                        "path": "frames",
                        "loop": True,
                        "fps": 15,
                        "pace": True,
                    },
                }
            )
        )
        log = (folder / "unit.log").open("w")
        stack.callback(log.close)
        command = [sys.executable, "-m", "device", "run", "--config", str(config)]
        proc = subprocess.Popen(
            [*command, "--log-level", "WARNING"],
            cwd=ROOT,
            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        samples: list[tuple[float, int]] = []
        assert proc.stdout is not None
        # Timed from the unit's "running" line: start-up (imports, journal) is not scanning.
        first = proc.stdout.readline()
        if "running" not in first:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"the unit did not start: {first!r}")
        started = time.monotonic()
        hwm = 0
        try:
            while time.monotonic() - started < duration_s and proc.poll() is None:
                rss = _vm_kib(proc.pid, "VmRSS")
                if rss is not None:
                    samples.append((time.monotonic() - started, rss))
                hwm = max(hwm, _vm_kib(proc.pid, "VmHWM") or 0)
                time.sleep(0.1)
            ran_s = time.monotonic() - started
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if proc.returncode != 0:
            raise RuntimeError(
                f"the unit exited {proc.returncode}: {(folder / 'unit.log').read_text()[-2000:]}"
            )
        match = re.search(r"stopped after (\d+) frames", out)
        frames = int(match.group(1)) if match else 0
    bare_kib = _bare_rss_kib()
    mb = 1024 / 1e6  # KiB to MB, the goal's unit
    steady = percentile([kib for t, kib in samples if t >= duration_s / 2], 50) * mb
    peak = max(kib for _, kib in samples) * mb
    bare = bare_kib * mb
    fps = frames / ran_s
    figures = [
        # One goal, judged once, on the peak (the ceiling "while scanning" means); the
        # steady figure is its context.
        Figure(SUBJECT, "unit RSS while scanning, steady", steady, "MB", bare,
               "bare python + numpy + zxing-cpp", note="context of the peak's goal"),
        Figure(SUBJECT, "unit RSS while scanning, peak", peak, "MB", bare,
               "bare python + numpy + zxing-cpp", f"≤ {GOAL_MB:g} MB", peak <= GOAL_MB),
        Figure(SUBJECT, "frames/s the unit reached", fps, "frames/s", 15.0, "asked (frames.fps)",
               note="paced by the frame source, as a camera paces"),
    ]  # fmt: skip
    raw: dict[str, Any] = {
        "duration_s": ran_s,
        "frames": frames,
        "fps": fps,
        "samples_kib": [kib for _, kib in samples],
        "vm_hwm_kib": hwm,
        "bare_rss_kib": bare_kib,
        "broker": broker_note,
    }
    text = __doc__.split("\n", 1)[1] + f"\nThis run: {ran_s:.0f} s, {broker_note}."
    return Result(figures, raw, text)
