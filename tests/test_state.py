"""The unit's state file: TinyDB on an atomic JSON storage, counters flushed on demand."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from device.indicators import Feedback
from device.state import COUNTER_NAMES, AtomicJSONStorage, StateError, UnitState


def test_counters_and_values_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with UnitState(path) as state:
        assert state.counters() == dict.fromkeys(COUNTER_NAMES, 0)
        assert state.get("config_version") is None
        assert state.get("config_version", 0) == 0
        state.increment("accepted")
        state.increment("accepted", by=4)
        state.increment("fault")
        state.set("config_version", 7)
        state.set("last_ack_at", "2021-08-15T02:00:00.000Z")
        state.set("venue", {"name": "Chợ Ia Kha", "doors": [1, 2]})
        state.set("config_version", 8)
    with UnitState(path) as reopened:
        assert reopened.counters() == {**dict.fromkeys(COUNTER_NAMES, 0), "accepted": 5, "fault": 1}
        assert reopened.get("config_version") == 8
        assert reopened.get("last_ack_at") == "2021-08-15T02:00:00.000Z"
        assert reopened.get("venue") == {"name": "Chợ Ia Kha", "doors": [1, 2]}
        reopened.increment("accepted")
        assert reopened.counters()["accepted"] == 6


def test_counting_does_not_write_the_file_but_flush_does(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with UnitState(path) as state:
        state.set("config_version", 1)
        before = path.read_bytes()
        for _ in range(50):
            state.increment("accepted")
        state.increment("refused")
        assert path.read_bytes() == before
        state.flush()
        on_disk = json.loads(path.read_text(encoding="utf-8"))
        assert on_disk["counters"]["1"]["accepted"] == 50
        assert on_disk["counters"]["1"]["refused"] == 1
        after_flush = path.read_bytes()
        state.flush()  # nothing changed: nothing written
        assert path.read_bytes() == after_flush


def test_set_writes_through_before_returning(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with UnitState(path) as state:
        state.set("config_version", 3)
        with UnitState(path) as other:
            assert other.get("config_version") == 3


def test_the_file_is_synced_then_renamed_then_the_folder_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(f"replace->{Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with UnitState(path) as state:
        state.set("config_version", 1)
    assert calls == ["fsync-file", "replace->state.json", "fsync-dir"]


def test_a_failed_write_leaves_the_old_file_and_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    with UnitState(path) as state:
        state.set("config_version", 1)
        state.increment("accepted", by=2)
        state.flush()
        before = path.read_bytes()

        def broken_replace(src: Any, dst: Any) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", broken_replace)
            with pytest.raises(StateError, match="No space left"):
                state.set("config_version", 2)
            state.increment("accepted")
            with pytest.raises(StateError):
                state.flush()

        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp left
        assert state.get("config_version") == 1  # memory is not ahead of the file
        state.set("config_version", 2)  # space is back
        state.flush()
    with UnitState(path) as reopened:
        assert reopened.get("config_version") == 2
        assert reopened.counters()["accepted"] == 3


@pytest.mark.parametrize(
    "content",
    [
        b'{"counters": {"1": {"accepted": 12',  # cut by a power cut mid-write
        b"\x00\x00\x00\x00\x00\x00",
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        b'{"counters": [1]}',
    ],
    ids=["truncated", "zeros", "not-utf8", "list", "table-not-object"],
)
def test_a_corrupt_file_starts_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="device.state"):
        state = UnitState(path)
    with state:
        assert any("state.json" in r.getMessage() for r in caplog.records)
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        assert state.counters() == dict.fromkeys(COUNTER_NAMES, 0)
        assert state.get("config_version") is None
        state.set("config_version", 4)
    assert json.loads(path.read_text(encoding="utf-8"))["values"]["1"] == {
        "key": "config_version",
        "value": 4,
    }


def test_a_missing_file_starts_empty_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="device.state"),
        UnitState(tmp_path / "state.json") as state,
    ):
        assert state.counters() == dict.fromkeys(COUNTER_NAMES, 0)
    assert caplog.records == []
    assert not (tmp_path / "state.json").exists()  # nothing to write: nothing changed


def test_storage_reads_back_what_it_wrote_and_hands_out_copies(tmp_path: Path) -> None:
    storage = AtomicJSONStorage(tmp_path / "s.json")
    assert storage.read() is None
    data = {"_default": {"1": {"name": "Rơ Châm H'Hen"}}}
    storage.write(data)
    data["_default"]["1"]["name"] = "changed by the caller"
    assert storage.read() == {"_default": {"1": {"name": "Rơ Châm H'Hen"}}}
    assert AtomicJSONStorage(tmp_path / "s.json").read() == storage.read()


def test_counter_names_are_checked_and_cover_every_feedback(tmp_path: Path) -> None:
    # ENROLLED answers the technician's enrollment QR, never a visitor: not counted.
    outcomes = {f.name.lower() for f in Feedback if f is not Feedback.ENROLLED}
    assert outcomes <= set(COUNTER_NAMES)
    with UnitState(tmp_path / "state.json") as state:
        with pytest.raises(ValueError, match="accpeted"):
            state.increment("accpeted")
        with pytest.raises(ValueError):
            state.increment("accepted", by=-1)
        with pytest.raises(TypeError, match="not JSON"):
            state.set("when", object())
        assert state.get("when") is None


def test_close_flushes_is_idempotent_and_ends_use(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = UnitState(path)
    state.increment("recorded_offline", by=3)
    state.close()
    state.close()
    assert json.loads(path.read_text(encoding="utf-8"))["counters"]["1"]["recorded_offline"] == 3
    with pytest.raises(StateError, match="closed"):
        state.increment("accepted")
    with pytest.raises(StateError, match="closed"):
        state.set("config_version", 1)
