"""Remote config: `hub unit-config` to a running unit through a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from device.clock import ManualClock
from device.config import BrokerConfig, FramesConfig, UnitConfig, load_config
from device.frames import ImageFileSource
from device.indicators import Feedback
from device.remote_config import in_quiet_hours
from device.unit import Unit
from doorscan.localbroker import LocalBroker
from doorscan.synthetic import blank_frame, cccd_text, make_people, render_frame
from doorscan.wire import (
    UnitConfigUpdate,
    UnitRecord,
    VenueRecord,
    decode_message,
    topic_config,
    topic_hub_status,
)
from hub.cli import main as hub_main
from hub.cli_common import UsageError
from hub.cli_unitconfig import parse_settings, rollout_share
from tests.hubstore import open_store
from tests.test_broker_security import HOST, Fleet
from tests.test_broker_security import fleet as fleet  # the TLS broker fixture, re-exported
from tests.test_status import Watcher
from tests.test_status import watcher as watcher  # the status-topic fixture, re-exported
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

DAY = datetime(2022, 1, 10, 2, tzinfo=UTC)  # 09:00 in Vietnam
BUZZER, GREEN = 22, 17
PEOPLE = make_people(4, seed=11)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`unit-config` keeps what it issues in the hub's database, by default ./hub.db."""
    monkeypatch.chdir(tmp_path)


def _config(tmp_path: Path, broker: LocalBroker) -> UnitConfig:
    return UnitConfig(
        unit_id="door-1",
        venue_id="hospital",
        data_dir=tmp_path / "data",
        debounce_s=300,
        broker=BrokerConfig(host=broker.host, port=broker.port),
        frames=FramesConfig(),
    )


def _unit(tmp_path: Path, broker: LocalBroker, **options: object) -> Unit:
    options.setdefault("clock", ManualClock(DAY))
    options.setdefault("pin_factory", MockFactory())
    return Unit(_config(tmp_path, broker), status_every_s=3600, **options)  # type: ignore[arg-type]


def _hub(broker: LocalBroker, *words: str) -> int:
    where = ("--broker-host", broker.host, "--broker-port", str(broker.port))
    return hub_main(["unit-config", "door-1", *words, *where])


def _set(broker: LocalBroker, *settings: str) -> None:
    assert _hub(broker, *settings, "--wait-applied", "20") == 0


def _raw(broker: LocalBroker, payload: str, topic: str = topic_config("door-1")) -> None:
    """Publish as a misbehaving tool would: mosquitto_pub, retained, no checks."""
    tool = shutil.which("mosquitto_pub")
    assert tool is not None
    where = ("-h", broker.host, "-p", str(broker.port), "-t", topic)
    subprocess.run(
        [tool, *where, "-q", "1", "-r", "-m", payload],
        check=True,
        timeout=20,
    )


def _raw_update(version: int, **settings: object) -> str:
    message = {"v": 1, "schema": "doorscan.unit-config", "unit_id": "door-1"}
    message.update(version=version, issued_at="2021-08-15T02:00:00.000Z", **settings)
    return json.dumps(message)


def _show(broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert _hub(broker, "--show") == 0
    shown: dict[str, object] = json.loads(capsys.readouterr().out)
    return shown


def _last_error(watcher: Watcher) -> str:
    statuses = watcher.statuses()
    return (statuses[-1].config_error or "") if statuses else ""


def _scan(unit: Unit, clock: ManualClock, text: str, seconds_later: float) -> list[Feedback]:
    clock.advance(seconds_later)
    feedback = [o.feedback for o in unit.scanner.process(render_frame(text))]
    clock.advance(5)  # out of view long enough that the next showing counts
    unit.scanner.process(blank_frame())
    return feedback


def _buzzes(factory: MockFactory, pin: int, since: int) -> int:
    return [s.state for s in factory.pin(pin).states[since:]].count(True)


def test_a_running_unit_applies_a_new_debounce_window_at_once(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher
) -> None:
    clock = ManualClock(DAY)
    person = cccd_text(PEOPLE[0])
    with _unit(tmp_path, broker, clock=clock).start() as unit:
        assert unit.sync.wait_connected(20)
        assert _scan(unit, clock, person, 0) == [Feedback.ACCEPTED]
        assert _scan(unit, clock, person, 60) == [Feedback.ALREADY_IN]  # file: 300 s
        _set(broker, "debounce_s=30")
        assert _scan(unit, clock, person, 60) == [Feedback.ACCEPTED]  # 65 s > 30 s now
        assert _scan(unit, clock, person, 10) == [Feedback.ALREADY_IN]
        assert watcher.statuses()[-1].config_version == 1
        assert watcher.statuses()[-1].config_error is None
        # A second change goes above the version the unit applied.
        _set(broker, "feedback_volume=40")
        assert wait_for(lambda: watcher.statuses()[-1].config_version == 2)
        assert unit.debounce.window_s == 30  # kept from version 1: the keys merge
    # Each issued version is an audit entry naming who issued it and what it set.
    with open_store(str(tmp_path / "hub.db")) as store:
        issued = [e for e in reversed(store.audit_entries(50)) if e.action == "unit_config"]
    assert [(e.params["account"], e.params["version"]) for e in issued] == [
        ("door-1", 1),
        ("door-1", 2),
    ]
    assert issued[1].params["settings"] == {"debounce_s": 30, "feedback_volume": 40}
    assert issued[0].params["principal"]["channel"] == "cli"


def test_quiet_hours_and_volume_zero_silence_the_buzzer_not_the_leds(
    tmp_path: Path, broker: LocalBroker
) -> None:
    factory = MockFactory()
    clock = ManualClock(DAY)
    with _unit(tmp_path, broker, clock=clock, pin_factory=factory).start() as unit:
        assert unit.sync.wait_connected(20)

        def answer(person: int) -> tuple[int, int]:
            buzzer_from = len(factory.pin(BUZZER).states)
            green_from = len(factory.pin(GREEN).states)
            assert _scan(unit, clock, cccd_text(PEOPLE[person]), 1) == [Feedback.ACCEPTED]
            assert unit.indicators.wait_idle(5)
            return _buzzes(factory, BUZZER, buzzer_from), _buzzes(factory, GREEN, green_from)

        assert answer(0) == (1, 1)  # one beep, green on
        _set(broker, "quiet_hours=08:30-10:00")  # 09:00 in Vietnam: quiet now
        assert answer(1) == (0, 1)
        _set(broker, "quiet_hours=22:00-06:00", "feedback_volume=0")  # not quiet, but volume 0
        assert answer(2) == (0, 1)
        _set(broker, "feedback_volume=")  # unset: the unit's default, loud
        assert answer(3) == (1, 1)


def test_frame_rate_paces_the_loop(tmp_path: Path, broker: LocalBroker) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(blank_frame()).save(folder / "blank.png")
    clock = ManualClock(DAY)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)  # the unit's clock is the one the deadlines are on

    frames = ImageFileSource([folder], loop=True)
    with _unit(tmp_path, broker, clock=clock, frames=frames, sleep=sleep).start() as unit:
        assert unit.sync.wait_connected(20)
        assert unit.run(max_frames=4) == 4
        assert waits == []  # no frame_rate: as fast as frames come
        _set(broker, "frame_rate=5")
        assert unit.run(max_frames=4) == 4
        assert waits == pytest.approx([0.2] * 4)
        waits.clear()
        _set(broker, "frame_rate=20")
        assert unit.run(max_frames=4) == 4
        assert waits == pytest.approx([0.05] * 4)


def test_bad_settings_are_refused_by_the_hub_and_nothing_is_published(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    for words in (["colour=red"], ["frame_rate=60"], ["feedback_volume=loud"],
                  ["quiet_hours=22:00-22:00"], ["debounce_s"]):  # fmt: skip
        assert _hub(broker, *words) == 2, words
        error = capsys.readouterr().err
        assert "error:" in error and words[0].split("=")[0] in error
    assert _show(broker, capsys)["issued"] is None
    assert _hub(broker, "frame_rate=10") == 0
    assert _hub(broker, "frame_rate=0.5") == 2
    shown = _show(broker, capsys)["issued"]
    assert isinstance(shown, dict) and shown["settings"] == {"frame_rate": 10}
    assert shown["version"] == 1


def test_a_bad_config_published_raw_is_refused_by_the_unit_which_keeps_its_own(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher, capsys: pytest.CaptureFixture[str]
) -> None:
    # The hub's "birth" message, as `hub serve` leaves it: the unit then reports in
    # revision 6, with the version it refused as a number.
    hub_status = {"v": 1, "rev": 6, "schema": "doorscan.hub-status", "online": True, "revision": 6}
    _raw(broker, json.dumps(hub_status), topic=topic_hub_status())
    with _unit(tmp_path, broker).start() as unit:
        assert unit.sync.wait_connected(20)
        _set(broker, "debounce_s=30")
        _raw(broker, _raw_update(2, debounce_s=10, colour="red"))
        assert wait_for(lambda: watcher.statuses()[-1].config_error is not None)
        status = watcher.statuses()[-1]
        assert status.config_version == 1
        assert status.config_error is not None
        assert "version 2" in status.config_error and "colour" in status.config_error
        _raw(broker, _raw_update(3, debounce_s=-1))
        assert wait_for(lambda: "version 3" in _last_error(watcher))
        assert "debounce_s" in _last_error(watcher)
        assert unit.debounce.window_s == 30 and unit.remote_config.version == 1
        # The hub's record is what it issued; the unit's word is in its status.
        shown = _show(broker, capsys)
        issued = shown["issued"]
        assert isinstance(issued, dict) and issued["settings"] == {"debounce_s": 30}
        assert (shown["applied_version"], shown["refused_version"]) == (1, 3)
        assert "version 3" in str(shown["config_error"])
        # The hub goes on above the refused version, and the error clears.
        assert _hub(broker, "debounce_s=45", "--wait-applied", "20") == 0
        assert wait_for(lambda: watcher.statuses()[-1].config_version == 4)
        assert watcher.statuses()[-1].config_error is None
        assert unit.debounce.window_s == 45


def test_an_older_version_is_ignored(tmp_path: Path, broker: LocalBroker, watcher: Watcher) -> None:
    with _unit(tmp_path, broker).start() as unit:
        assert unit.sync.wait_connected(20)
        _set(broker, "debounce_s=30")
        _set(broker, "debounce_s=40")
        _raw(broker, _raw_update(1, debounce_s=600))  # a replay of an old message
        _raw(broker, _raw_update(2, debounce_s=700))  # the same version again
        # Delivered in order: once version 3's refusal shows, version 1 was handled.
        _raw(broker, _raw_update(3, debounce_s="ten"))
        assert wait_for(lambda: "version 3" in _last_error(watcher))
        assert watcher.statuses()[-1].config_version == 2
        assert unit.debounce.window_s == 40


def test_the_config_survives_a_restart_with_the_broker_down(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher
) -> None:
    with _unit(tmp_path, broker).start() as unit:
        assert unit.sync.wait_connected(20)
        _set(broker, "debounce_s=30", "frame_rate=5")
    broker.stop()
    clock = ManualClock(DAY)
    person = cccd_text(PEOPLE[1])
    with _unit(tmp_path, broker, clock=clock).start() as again:
        assert not again.sync.online
        assert again.remote_config.version == 1
        assert again.health()["config_version"] == 1
        assert _scan(again, clock, person, 0) == [Feedback.RECORDED_OFFLINE]
        assert _scan(again, clock, person, 40) == [Feedback.RECORDED_OFFLINE]  # 30 s window
        assert again._frame_period_s == pytest.approx(0.2)
        # The broker back; the test broker keeps nothing on disk, so the retained copy a
        # real broker would hand back (the same version) is published again by hand.
        broker.start()
        assert again.sync.wait_connected(30)
        fresh = Watcher(broker, "door-1")  # the old watcher's subscription died with the broker
        try:
            _raw(broker, _raw_update(1, debounce_s=600))
            # Delivered in order: once version 2's refusal shows, version 1 was handled.
            _raw(broker, _raw_update(2, frame_rate=31))
            assert wait_for(lambda: "version 2" in _last_error(fresh))
        finally:
            fresh.close()
        assert again.remote_config.applied == 0 and again.remote_config.version == 1


def test_over_tls_only_the_hubs_certificate_sets_a_units_config(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet: Fleet = request.getfixturevalue("fleet")  # a provisioned fleet behind TLS + ACL
    config = load_config(fleet.units_dir / "unit-d.json")
    config = config.model_copy(update={"data_dir": tmp_path / "data"})

    def unit_config(files: tuple[Path, Path, Path], *settings: str) -> int:
        ca, cert, key = (str(p) for p in files)
        where = ["--broker-host", HOST, "--broker-port", str(fleet.port), "--timeout-s", "10"]
        tls = ["--ca-file", ca, "--cert-file", cert, "--key-file", key]
        return hub_main(["unit-config", "unit-d", *settings, *where, *tls])

    with Unit(config, clock=ManualClock(DAY), pin_factory=MockFactory()).start() as unit:
        assert unit.sync.wait_connected(20)
        # Another unit's certificate: the broker says no (MQTT 5 PUBACK), nothing changes.
        assert unit_config(fleet.unit_files("unit-a"), "debounce_s=1") == 2
        assert "refused the config" in capsys.readouterr().err
        assert unit_config(fleet.role_files("hub"), "debounce_s=20", "--wait-applied", "20") == 0
        assert unit.remote_config.version == 1 and unit.debounce.window_s == 20
        # A second change: the next version, with the first change's keys kept. (The ACL
        # lets the hub write config topics, not read them: the hub's database remembers.)
        hub = fleet.role_files("hub")
        assert unit_config(hub, "feedback_volume=0", "--wait-applied", "20") == 0
        assert unit.remote_config.version == 2 and unit.debounce.window_s == 20
        assert unit.remote_config.settings.feedback_volume == 0
        capsys.readouterr()
        assert unit_config(hub, "--show") == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["issued"]["version"] == 2 and shown["applied_version"] == 2
        assert shown["issued"]["settings"] == {"debounce_s": 20, "feedback_volume": 0}


def test_quiet_hours_cross_midnight_in_vietnam_time() -> None:
    night = (time(22, 0), time(6, 0))
    assert in_quiet_hours(night, datetime(2021, 8, 15, 15, 0, tzinfo=UTC))  # 22:00 ICT
    assert in_quiet_hours(night, datetime(2021, 8, 15, 22, 59, tzinfo=UTC))  # 05:59 ICT
    assert not in_quiet_hours(night, datetime(2021, 8, 15, 23, 0, tzinfo=UTC))  # 06:00 ICT
    assert not in_quiet_hours(night, datetime(2021, 8, 15, 14, 59, tzinfo=UTC))
    lunch = (time(12, 0), time(13, 30))
    assert in_quiet_hours(lunch, datetime(2021, 8, 15, 5, 0, tzinfo=UTC))
    assert not in_quiet_hours(lunch, datetime(2021, 8, 15, 6, 30, tzinfo=UTC))


def test_settings_on_the_command_line() -> None:
    assert parse_settings(["debounce_s=120", "quiet_hours=22:00-06:00", "frame_rate="]) == {
        "debounce_s": 120,
        "quiet_hours": "22:00-06:00",
        "frame_rate": None,
    }
    for bad in (["nope=1"], ["debounce_s=1", "debounce_s=2"], ["debounce_s"]):
        with pytest.raises(UsageError):
            parse_settings(bad)


# -- fleet-update: which signed release each unit should run ---------------------------------


def _retained_configs(broker: LocalBroker) -> dict[str, UnitConfigUpdate]:
    """Every unit's retained config on the broker, as an outsider reads it from the schema."""
    got: dict[str, UnitConfigUpdate] = {}
    answered: set[int] = set()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.__setitem__(
        m.topic.split("/")[-2], decode_message(bytes(m.payload), UnitConfigUpdate)
    )
    client.on_subscribe = lambda c, u, mid, codes, props: answered.add(mid)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("doorscan/v1/units/+/config", qos=1)
    # The broker sends a subscription's retained messages before it answers a later one.
    _, barrier = client.subscribe("doorscan/v1/hub/never-retained", qos=0)
    assert wait_for(lambda: barrier in answered)
    client.loop_stop()
    client.disconnect()
    return got


def _fleet(tmp_path: Path) -> dict[str, str]:
    """20 active units at two venues and one inactive, in the hub's database."""
    units = {f"door-{n:02d}": ("cho" if n % 2 else "benh-vien") for n in range(20)}
    with open_store(str(tmp_path / "hub.db")) as store:
        for venue in ("cho", "benh-vien"):
            store.upsert_venue(VenueRecord(venue_id=venue, name=venue))
        for unit_id, venue in units.items():
            store.upsert_unit(UnitRecord(unit_id=unit_id, venue_id=venue))
        store.upsert_unit(UnitRecord(unit_id="door-old", venue_id="cho", active=False))
    return units


def _fleet_update(broker: LocalBroker, *words: str) -> int:
    where = ("--broker-host", broker.host, "--broker-port", str(broker.port))
    return hub_main(["fleet-update", *words, *where])


def test_fleet_update_tells_a_stable_share_of_the_chosen_units_the_release_to_run(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    units = _fleet(tmp_path)
    at_market = sorted(u for u, v in units.items() if v == "cho")
    assert _fleet_update(broker, "--version", "1.4.0", "--venue", "cho", "--percent", "50") == 0
    first = _retained_configs(broker)
    told = sorted(first)
    assert told == [u for u in at_market if rollout_share(u) < 50] and 0 < len(told) < 10
    assert {(c.software, c.version) for c in first.values()} == {("1.4.0", 1)}
    assert f"{len(told)} unit(s) told to run 1.4.0" in capsys.readouterr().out
    # The whole venue next: the first half again (a new version), the rest for the first time.
    assert _fleet_update(broker, "--version", "1.4.0", "--venue", "cho") == 0
    second = _retained_configs(broker)
    assert sorted(second) == at_market  # the inactive unit and the other venue untouched
    assert all(second[u].version == (2 if u in told else 1) for u in at_market)
    # A unit's other settings stay: software is one key of its remote config.
    assert hub_main(["unit-config", at_market[0], "debounce_s=90", "--broker-host",
                     broker.host, "--broker-port", str(broker.port)]) == 0  # fmt: skip
    assert _fleet_update(broker, "--version", "1.5.0", "--units", at_market[0]) == 0
    last = _retained_configs(broker)[at_market[0]]
    assert (last.software, last.debounce_s) == ("1.5.0", 90)


def test_fleet_update_refuses_what_it_cannot_carry_out_and_tells_nobody(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(tmp_path)
    for words in (
        ("--version", "1.4"),  # not a release number
        ("--version", "1.4.0", "--units", "door-old"),  # inactive
        ("--version", "1.4.0", "--units", "door-99"),  # unknown
        ("--version", "1.4.0", "--percent", "0"),
        ("--version", "1.4.0", "--venue", "nowhere"),
    ):
        assert _fleet_update(broker, *words) == 2, words
    errors = capsys.readouterr().err
    for why in ("not a release number", "not an active unit", "door-99", "--percent", "matches"):
        assert why in errors
    assert _fleet_update(broker, "--version", "1.4.0", "--dry-run") == 0
    assert capsys.readouterr().out.count("would be told software=1.4.0") == 20
    assert _retained_configs(broker) == {}


def test_a_running_unit_keeps_the_release_it_is_told_to_run(
    tmp_path: Path, broker: LocalBroker, watcher: Watcher
) -> None:
    with _unit(tmp_path, broker).start() as unit:
        assert unit.sync.wait_connected(20)
        _set(broker, "software=1.4.0")
        assert watcher.statuses()[-1].config_version == 1
        assert unit.remote_config.settings.software == "1.4.0"
