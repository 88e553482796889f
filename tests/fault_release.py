"""Install and switch to a release, killed by SIGKILL at a chosen step (test_release_slots.py).

    python tests/fault_release.py ROOT MANIFEST_JSON FILES_JSON KILL_AT

KILL_AT names the step after which the process kills itself, as a power cut would:
``venv`` (the venv made), ``pip`` (the wheels installed), ``rename`` (the release folder
renamed into place), ``previous`` (the previous link replaced), ``never``. Nothing else
is changed: the steps are `device.releases.ReleaseSlots`' own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from device.releases import ReleaseSlots
from device.updater import FetchedRelease
from doorscan.release import ReleaseManifest


def main() -> None:
    root, manifest_json, files_json, kill_at = sys.argv[1:5]
    calls = {"run": 0, "replace": 0}
    runs = {"venv": 1, "pip": 2}
    replaces = {"rename": 1, "previous": 2}

    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        done = subprocess.run(*args, **kwargs)
        calls["run"] += 1
        if runs.get(kill_at) == calls["run"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    replace = Path.replace

    def replacing(self: Path, target: Any) -> Path:
        moved = replace(self, target)
        calls["replace"] += 1
        if replaces.get(kill_at) == calls["replace"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return moved

    Path.replace = replacing  # type: ignore[method-assign,assignment]
    manifest = ReleaseManifest.model_validate_json(manifest_json)
    files = {name: Path(path) for name, path in json.loads(files_json).items()}
    slots = ReleaseSlots(Path(root), run=run)
    slots.install(FetchedRelease(manifest, files))
    slots.switch(manifest.version)
    print("switched", slots.current())


if __name__ == "__main__":
    main()
