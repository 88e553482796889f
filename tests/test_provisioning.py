"""provisioning through its command line: keys, registry, unit configs, cards, publishing.

Every test drives `main([...])` on a fresh home folder. Cards are decoded from the
written PNG with zxing-cpp and verified with the shared parser; publishing goes to a
real Mosquitto and is read back by a separate subscriber, as the hub would read it.
"""

from __future__ import annotations

import json
import shlex
import socket
import stat
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from device.config import load_config
from device.decoders import ZxingDecoder
from doorscan.cards import CardKeyring, CardSigner
from doorscan.errors import Refusal
from doorscan.localbroker import LocalBroker, free_port
from doorscan.payloads import parse_qr
from doorscan.wire import (
    SUB_REGISTRY,
    FleetKeys,
    UnitRecord,
    VenueRecord,
    decode_message,
    parse_topic,
)
from provisioning.cli import main
from provisioning.fleet import today_vn
from provisioning.publish import Message, PublishError, publish_messages

NAME = "Rơ Châm H'Hen"
# Where units of tests that do not look at the broker connect: loopback, plain MQTT, no flag
# needed (tests/test_fleet_broker_defaults.py covers the recorded broker and the refusals).
LOCAL = "--broker-host 127.0.0.1"


def run(home: Path, command: str) -> int:
    """One command line, as a technician types it after `python -m provisioning`."""
    return main(["--home", str(home), *shlex.split(command)])


def ok(home: Path, command: str) -> None:
    assert run(home, command) == 0, command


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    ok(root, "init")
    return root


def listed(home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    ok(home, "list --json")
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def keyring(home: Path) -> CardKeyring:
    return CardKeyring.from_pem_files([home / "keys" / "card-signing.pub.pem"])


def decode_png(path: Path) -> str:
    # The unit's own decoder, not zxing's .text: that one guesses charsets, the door does not.
    with Image.open(path) as image, ZxingDecoder() as decoder:
        results = decoder.decode(np.asarray(image.convert("L")))
    assert len(results) == 1 and results[0].text is not None, results
    return results[0].text


# -- init ----------------------------------------------------------------------------


def test_init_makes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "fleet"
    ok(root, "init")
    private = root / "keys" / "card-signing.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "keys").stat().st_mode) == 0o700
    signer = CardSigner.from_pem_file(private)
    assert (root / "keys" / "card-signing.pub.pem").read_bytes() == signer.public_pem()
    assert json.loads((root / "registry.json").read_text()) == {}
    assert signer.key_id in capsys.readouterr().out


def test_second_init_refuses_to_replace_the_keys_unless_forced(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = home / "keys" / "card-signing.pem"
    first = private.read_bytes()
    capsys.readouterr()
    assert run(home, "init") == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert "Traceback" not in err
    assert private.read_bytes() == first

    ok(home, "add-venue --id v1 --name 'Chợ Pleiku'")
    ok(home, "init --force")
    assert private.read_bytes() != first
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "warning" in capsys.readouterr().err
    # A new key does not wipe the registry.
    assert [v["venue_id"] for v in listed(home, capsys)["venues"]] == ["v1"]


def test_home_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOORSCAN_FLEET", str(tmp_path / "from-env"))
    assert main(["init"]) == 0
    assert (tmp_path / "from-env" / "keys" / "card-signing.pem").exists()


def test_commands_before_init_say_to_run_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path / "nothing", "add-venue --id v1 --name X") == 1
    assert "init" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


# -- venues and units ----------------------------------------------------------------


def test_a_device_config_loads_on_the_unit_with_its_card_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(
        home,
        "add-venue --id bv-gia-lai --name 'Bệnh viện Gia Lai'"
        " --address '132 Tôn Thất Tùng, Pleiku' --district Pleiku",
    )
    assert "added venue bv-gia-lai" in capsys.readouterr().out
    ok(home, "add-venue --id bv-gia-lai --name 'Bệnh viện Đa khoa Gia Lai'")
    assert "updated venue bv-gia-lai" in capsys.readouterr().out

    ok(
        home,
        "add-device --id bv-gia-lai-door-1 --venue bv-gia-lai --broker-host hub.example"
        " --broker-port 1884 --tls --decoder zbar --debounce-s 120",
    )
    config_path = home / "units" / "bv-gia-lai-door-1.json"
    assert str(config_path) in capsys.readouterr().out

    config = load_config(config_path)
    assert (config.unit_id, config.venue_id) == ("bv-gia-lai-door-1", "bv-gia-lai")
    assert (config.decoder, config.debounce_s) == ("zbar", 120.0)
    assert (config.broker.host, config.broker.port) == ("hub.example", 1884)
    assert config.data_dir == Path("/var/lib/doorscan")
    assert len(config.card_keys) == 1 and config.card_keys[0].exists()
    assert config.card_keys[0].read_bytes() == (home / "keys" / "card-signing.pub.pem").read_bytes()
    assert len(CardKeyring.from_pem_files(config.card_keys)) == 1

    registry = listed(home, capsys)
    assert registry["venues"] == [
        {
            "venue_id": "bv-gia-lai",
            "name": "Bệnh viện Đa khoa Gia Lai",
            "address": "132 Tôn Thất Tùng, Pleiku",  # kept: the update left it out
            "district": "Pleiku",
        }
    ]
    [unit] = registry["units"]
    registered = datetime.fromisoformat(unit.pop("registered_at"))
    assert unit == {"unit_id": "bv-gia-lai-door-1", "venue_id": "bv-gia-lai", "active": True}
    assert abs(registered - datetime.now(UTC)) < timedelta(minutes=5)


def test_a_config_folder_can_be_moved_whole(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "usb-stick"
    ok(home, "add-venue --id cho-pleiku --name 'Chợ Pleiku'")
    ok(home, f"add-device --id door-2 --venue cho-pleiku --out {out} --data-dir state {LOCAL}")
    moved = out.rename(tmp_path / "on-the-pi")
    config = load_config(moved / "door-2.json")
    assert config.data_dir == moved.resolve() / "state"
    assert config.card_keys[0].parent == moved.resolve()
    assert config.card_keys[0].exists()


def test_a_device_for_an_unknown_venue_is_refused_and_nothing_is_written(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(home, "add-device --id door-1 --venue nowhere") == 1
    err = capsys.readouterr().err
    assert "venue 'nowhere' is not registered" in err and "add-venue" in err
    assert not (home / "units" / "door-1.json").exists()
    assert listed(home, capsys)["units"] == []


@pytest.mark.parametrize(
    "command",
    [
        "add-venue --id Bad/Id --name X",
        "add-venue --id cho+1 --name X",
        "add-venue --id 'cho lon' --name X",
        "add-device --id Bad/Id --venue v1",
        "add-device --id door-9 --venue Bad/Id",
    ],
)
def test_ids_that_cannot_be_topic_levels_are_refused(
    home: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    ok(home, "add-venue --id v1 --name Chợ")
    before = (home / "registry.json").read_bytes()
    capsys.readouterr()
    assert run(home, command) == 1
    err = capsys.readouterr().err
    assert "an id is" in err and "Traceback" not in err
    assert (home / "registry.json").read_bytes() == before


def test_a_bad_config_value_names_the_key(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok(home, "add-venue --id v1 --name Chợ")
    assert run(home, f"add-device --id u1 --venue v1 {LOCAL} --debounce-s -5") == 1
    assert "debounce_s" in capsys.readouterr().err
    assert listed(home, capsys)["units"] == []
    # A port out of range is refused while parsing, like any malformed option.
    with pytest.raises(SystemExit) as exit_:
        run(home, f"add-device --id u1 --venue v1 {LOCAL} --broker-port 70000")
    assert exit_.value.code == 2
    assert "--broker-port" in capsys.readouterr().err
    assert listed(home, capsys)["units"] == []


def test_registry_writes_replace_the_file_and_keep_it_private(home: Path) -> None:
    registry = home / "registry.json"
    # A second name for the old file: a rewrite in place (TinyDB's default storage)
    # would show through it, a rename-over leaves it as it was.
    before = home / "registry.before"
    before.hardlink_to(registry)
    ok(home, "add-venue --id v1 --name Chợ")
    assert before.read_text() == "{}\n"
    assert "Chợ" in registry.read_text(encoding="utf-8")
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


# -- cards ---------------------------------------------------------------------------


def test_a_printed_card_decodes_and_verifies_with_the_fleet_key(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = today_vn()
    ok(home, f"card --name {shlex.quote(NAME)} --contact '0905 123 456'")
    out = capsys.readouterr().out
    [card] = listed(home, capsys)["cards"]
    png = home / "cards" / f"{card['card_id']}.png"
    assert card["card_id"] in out and str(png) in out

    text = decode_png(png)
    identity = parse_qr(text, card_keys=keyring(home))
    assert (identity.kind, identity.name, identity.id_number) == ("card", NAME, card["card_id"])
    assert "0905" not in text  # the contact stays in the registry
    assert card["contact"] == "0905 123 456" and card["name"] == NAME
    assert card["issued"] in {before.isoformat(), (before + timedelta(days=1)).isoformat()}

    altered_text = text.replace("Châm", "Chăm")
    assert altered_text != text
    with pytest.raises(Refusal) as altered:
        parse_qr(altered_text, card_keys=keyring(home))
    assert altered.value.code == "card_signature"

    capsys.readouterr()
    ok(home, "list")
    table = capsys.readouterr().out
    assert card["card_id"] in table and NAME in table


def test_a_card_from_another_fleet_is_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other-fleet"
    ok(other, "init")
    ok(other, f"card --name {shlex.quote(NAME)} --out {tmp_path / 'other.png'}")
    text = decode_png(tmp_path / "other.png")
    assert parse_qr(text, card_keys=keyring(other)).name == NAME
    with pytest.raises(Refusal) as refused:
        parse_qr(text, card_keys=keyring(home))
    assert refused.value.code == "card_unknown_key"


def test_a_card_can_be_written_as_svg(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "print" / "card.svg"
    ok(home, f"card --name {shlex.quote(NAME)} --out {out}")
    svg = out.read_text(encoding="utf-8")
    assert "<svg" in svg and 'width="' in svg and "mm" in svg


@pytest.mark.parametrize("name", ["", "Nguyễn|Văn An"])
def test_a_card_with_a_bad_name_or_file_is_refused_before_it_is_recorded(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert run(home, f"card --name {shlex.quote(name)}") == 1
    assert "card_name" in capsys.readouterr().err
    assert run(home, f"card --name Lan --out {tmp_path / 'card.jpg'}") == 1
    assert ".png, .pdf or .svg" in capsys.readouterr().err
    assert listed(home, capsys)["cards"] == []


# -- publish -------------------------------------------------------------------------


def retained_registry(broker: LocalBroker, count: int) -> dict[str, mqtt.MQTTMessage]:
    """Connect afterwards, as a hub would, and collect the retained registry messages."""
    received: dict[str, mqtt.MQTTMessage] = {}
    done = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(SUB_REGISTRY, qos=1)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received[message.topic] = message
        if len(received) >= count:
            done.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-hub")
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return received


def decoded(messages: dict[str, mqtt.MQTTMessage]) -> dict[str, VenueRecord | UnitRecord]:
    """The venue and unit records among `messages`; every publish also carries the fleet's
    keys (checked in tests/test_fleet_broker_defaults.py), which must decode too."""
    records: dict[str, VenueRecord | UnitRecord] = {}
    for topic, message in messages.items():
        assert message.retain, topic
        kind, entity_id = parse_topic(topic)
        payload = bytes(message.payload)
        record: VenueRecord | UnitRecord
        if kind == "fleet_keys":
            decode_message(payload, FleetKeys)
            continue
        if kind == "venue":
            record = decode_message(payload, VenueRecord)
        else:
            record = decode_message(payload, UnitRecord)
        records[f"{kind}:{entity_id}"] = record
    return records


@pytest.mark.broker
def test_publish_leaves_every_venue_and_unit_retained_for_the_hub(
    home: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(home, "add-venue --id bv-gia-lai --name 'Bệnh viện Gia Lai' --district Pleiku")
    ok(home, "add-venue --id cho-pleiku --name 'Chợ Pleiku'")
    for unit, venue in (("door-1", "bv-gia-lai"), ("door-2", "bv-gia-lai"), ("gate", "cho-pleiku")):
        ok(home, f"add-device --id {unit} --venue {venue} {LOCAL}")
    capsys.readouterr()

    ok(home, f"publish --broker-host {broker.host} --broker-port {broker.port}")
    assert "published 6" in capsys.readouterr().out  # and the fleet's keys

    records = decoded(retained_registry(broker, 6))
    # Each unit carries when it was registered (the hub holds apart scans dated before).
    for key, record in list(records.items()):
        if isinstance(record, UnitRecord):
            assert record.registered_at is not None and record.rev == 6
            records[key] = record.model_copy(update={"registered_at": None, "rev": None})
    assert records == {
        "venue:bv-gia-lai": VenueRecord(
            venue_id="bv-gia-lai", name="Bệnh viện Gia Lai", district="Pleiku"
        ),
        "venue:cho-pleiku": VenueRecord(venue_id="cho-pleiku", name="Chợ Pleiku"),
        "unit:door-1": UnitRecord(unit_id="door-1", venue_id="bv-gia-lai"),
        "unit:door-2": UnitRecord(unit_id="door-2", venue_id="bv-gia-lai"),
        "unit:gate": UnitRecord(unit_id="gate", venue_id="cho-pleiku"),
    }


@pytest.mark.broker
def test_publish_to_publishes_a_new_venue_and_unit_at_once(home: Path, broker: LocalBroker) -> None:
    where = f"{broker.host}:{broker.port}"
    ok(home, f"add-venue --id v1 --name Chợ --publish-to {where}")
    ok(home, f"add-device --id u1 --venue v1 {LOCAL} --publish-to {where}")
    assert set(decoded(retained_registry(broker, 3))) == {"venue:v1", "unit:u1"}


def test_publish_with_no_broker_fails_and_says_where(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    ok(home, "add-venue --id v1 --name Chợ")
    capsys.readouterr()
    assert run(home, f"publish --broker-host 127.0.0.1 --broker-port {port} --timeout-s 2") == 1
    err = capsys.readouterr().err
    assert f"could not connect to the broker at 127.0.0.1:{port}" in err

    assert (
        run(home, f"add-venue --id v2 --name Chợ2 --timeout-s 2 --publish-to 127.0.0.1:{port}") == 1
    )
    assert "registry change is saved" in capsys.readouterr().err
    assert [v["venue_id"] for v in listed(home, capsys)["venues"]] == ["v1", "v2"]


@pytest.mark.broker
def test_a_broker_that_refuses_the_topic_is_an_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(home, "add-venue --id v1 --name Chợ")
    # Mosquitto started as root reads its ACL after dropping to the mosquitto user, so the
    # file must not sit in pytest's private (0700) tmp_path.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o755)
        acl = Path(folder) / "acl"
        acl.write_text("topic read doorscan/#\n")  # anonymous clients may read, not write
        acl.chmod(0o644)
        with LocalBroker(extra_config=f"acl_file {acl}\n") as refusing:
            where = f"--broker-host {refusing.host} --broker-port {refusing.port}"
            code = run(home, f"publish {where} --timeout-s 5")
    assert code == 1
    err = capsys.readouterr().err
    assert "doorscan/v1/registry/venues/v1" in err and "Not authorized" in err


def test_a_peer_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nothing ever replies
        port = silent.getsockname()[1]
        with pytest.raises(PublishError, match=r"did not answer within 0\.5 s"):
            publish_messages(
                [Message("doorscan/v1/registry/venues/v1", b"{}")], "127.0.0.1", port, timeout_s=0.5
            )


@pytest.mark.parametrize("name", ["Võ Anh", "Lê Thị Hà", "An"])
def test_a_card_whose_name_fits_latin_1_is_still_utf_8(
    home: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # segno writes text that fits Latin-1 as Latin-1 unless told otherwise; doors read UTF-8.
    ok(home, f"card --name {shlex.quote(name)}")
    [card] = listed(home, capsys)["cards"]
    text = decode_png(home / "cards" / f"{card['card_id']}.png")
    assert parse_qr(text, card_keys=keyring(home)).name == name


def test_init_seal_key_upgrades_an_old_fleet_home_once(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = home / "keys"
    for name in ("hub-seal.key", "hub-seal.pub"):
        (keys / name).unlink()  # as a home made before sealing existed
    ok(home, "add-venue --id v1 --name 'Chợ Pleiku'")
    ok(home, f"add-device --id u-old --venue v1 --out {tmp_path / 'old'} {LOCAL}")
    assert load_config(tmp_path / "old" / "u-old.json").seal_key is None
    ok(home, "init-seal-key")
    assert (keys / "hub-seal.key").stat().st_mode & 0o777 == 0o600
    ok(home, f"add-device --id u-old --venue v1 --out {tmp_path / 'new'} {LOCAL}")
    assert load_config(tmp_path / "new" / "u-old.json").seal_key is not None
    # Units now seal for this pair: a second run must not replace it.
    before = (keys / "hub-seal.key").read_bytes()
    capsys.readouterr()
    assert run(home, "init-seal-key") == 1
    assert "keep it" in capsys.readouterr().err
    assert (keys / "hub-seal.key").read_bytes() == before
