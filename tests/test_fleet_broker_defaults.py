"""Provisioning is secure by default about where units connect.

The fleet home records the broker once (`init --broker-host`, `broker-files --host`,
`broker-address`); commands that write a unit config or publish use it for what their
flags leave out, refuse (exit 2, nothing written) when no host is known, and refuse
plain MQTT to another machine unless `--insecure`. `publish` also leaves the fleet's
public keys retained (`FleetKeys`), read back here by a separate subscriber from a real
Mosquitto and compared with the key files in the home.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from device.config import load_config
from doorscan.bundle import BUNDLE_DIR
from doorscan.localbroker import LocalBroker
from doorscan.netaddr import is_loopback
from doorscan.wire import FleetKeys, decode_message, topic_fleet_keys
from provisioning.fleet import FleetHome
from provisioning.fleet_keys import fleet_keys, public_key_text
from tests.test_provisioning import ok, retained_registry, run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    ok(root, "init")
    ok(root, "add-venue --id v1 --name 'Chợ Pleiku'")
    return root


def recorded(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "broker.json").read_text(encoding="utf-8"))
    return data


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def raw_text(pem: bytes) -> str:
    """A PEM public key as FleetKeys should carry it, worked out apart from provisioning."""
    key = serialization.load_pem_public_key(pem)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


# -- no host, no config ----------------------------------------------------------------


@pytest.mark.parametrize("flags", ["", "--tls", "--broker-port 8883"])
def test_add_device_with_no_broker_recorded_is_refused_and_writes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], flags: str
) -> None:
    before = (home / "registry.json").read_bytes()
    keys_before = sorted(p.name for p in (home / "keys").iterdir())
    capsys.readouterr()
    assert run(home, f"add-device --id door-1 --venue v1 {flags}") == 2
    err = one_line(capsys.readouterr().err)
    assert "no broker host" in err
    assert "init --broker-host" in err and "broker-files --host" in err
    assert "--broker-host HOST" in err
    assert not (home / "units").exists()
    assert (home / "registry.json").read_bytes() == before
    assert sorted(p.name for p in (home / "keys").iterdir()) == keys_before  # no CA made


def test_init_records_the_broker_and_add_device_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init --broker-host hub.example")
    assert recorded(home) == {
        "host": "hub.example",
        "port": 8883,
        "tls": True,  # TLS unless --plain: a plain broker is the exception
        "ca_file": None,
        "cert_file": None,
        "key_file": None,
    }
    ok(home, "add-venue --id v1 --name 'Chợ Pleiku'")
    ok(home, "add-device --id door-1 --venue v1")
    config = load_config(home / "units" / "door-1.json")
    assert (config.broker.host, config.broker.port) == ("hub.example", 8883)
    assert config.broker.ca_file is not None and config.broker.ca_file.exists()
    assert config.broker.cert_file is not None and config.broker.cert_file.exists()

    # On a home that exists, init would replace the keys: it says how to record the broker.
    capsys.readouterr()
    assert run(home, "init --broker-host other.example") == 1
    assert "broker-address --host other.example" in one_line(capsys.readouterr().err)
    assert recorded(home)["host"] == "hub.example"


def test_tls_uses_port_8883_and_plain_to_another_machine_takes_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fleet"
    ok(home, "init --broker-host hub.example --plain")
    assert (recorded(home)["port"], recorded(home)["tls"]) == (1883, False)
    assert "--insecure" in capsys.readouterr().err  # warned when recorded
    ok(home, "add-venue --id v1 --name 'Chợ Pleiku'")

    ok(home, "add-device --id door-tls --venue v1 --tls")
    config = load_config(home / "units" / "door-tls.json")
    assert (config.broker.host, config.broker.port) == ("hub.example", 8883)
    assert config.broker.ca_file is not None

    capsys.readouterr()
    assert run(home, "add-device --id door-plain --venue v1") == 2
    err = one_line(capsys.readouterr().err)
    assert "plain MQTT to hub.example:1883" in err and "--insecure" in err
    assert not (home / "units" / "door-plain.json").exists()

    ok(home, "add-device --id door-plain --venue v1 --insecure")
    err = one_line(capsys.readouterr().err)
    assert err.startswith("provisioning: warning:") and "hub.example:1883" in err
    config = load_config(home / "units" / "door-plain.json")
    assert (config.broker.host, config.broker.port) == ("hub.example", 1883)
    assert config.broker.ca_file is None


def test_flags_given_win_over_the_recorded_broker(home: Path) -> None:
    ok(home, "broker-address --host hub.example")
    ok(home, "add-device --id door-1 --venue v1 --broker-host other.example --broker-port 9883")
    config = load_config(home / "units" / "door-1.json")
    assert (config.broker.host, config.broker.port) == ("other.example", 9883)
    assert config.broker.ca_file is not None  # TLS, as recorded
    ok(home, "add-device --id door-2 --venue v1 --broker-host 127.0.0.1 --plain")
    config = load_config(home / "units" / "door-2.json")
    assert (config.broker.host, config.broker.port, config.broker.ca_file) == (
        "127.0.0.1",
        1883,
        None,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1"])
def test_plain_mqtt_on_this_machine_needs_no_flag(
    home: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    capsys.readouterr()
    ok(home, f"add-device --id door-1 --venue v1 --broker-host {host}")
    assert capsys.readouterr().err == ""
    assert load_config(home / "units" / "door-1.json").broker.host == host


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("::2", False),
        ("hub.local", False),
        ("localhost.example", False),
        ("128.0.0.1", False),
    ],
)
def test_loopback_is_127_0_0_0_8_and_1_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- the record itself -----------------------------------------------------------------


def test_broker_files_records_its_first_host_the_tls_port_and_its_files(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "broker"
    ok(home, f"broker-files --out {out} --port 8884 --host hub.local --host 10.0.0.2")
    assert recorded(home) == {
        "host": "hub.local",
        "port": 8884,
        "tls": True,
        "ca_file": str((out / "ca.pem").resolve()),
        "cert_file": str((out / "provisioning-cert.pem").resolve()),
        "key_file": str((out / "provisioning-key.pem").resolve()),
    }
    ok(home, "add-device --id door-1 --venue v1")
    config = load_config(home / "units" / "door-1.json")
    assert (config.broker.host, config.broker.port) == ("hub.local", 8884)
    assert config.broker.ca_file is not None
    assert config.broker.ca_file.read_bytes() == (out / "ca.pem").read_bytes()

    # Again without --host (new certificates): the recorded host stays.
    ok(home, f"broker-files --out {tmp_path / 'broker2'} --port 8885")
    assert (recorded(home)["host"], recorded(home)["port"]) == ("hub.local", 8885)


def test_broker_address_shows_and_changes_the_record(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    ok(home, "broker-address")
    assert "no broker recorded" in capsys.readouterr().out
    ok(home, "broker-address --host hub.local")
    assert (recorded(home)["port"], recorded(home)["tls"]) == (8883, True)
    ok(home, "broker-address --plain")  # a switch moves to that protocol's port
    assert (recorded(home)["host"], recorded(home)["port"]) == ("hub.local", 1883)
    ok(home, "broker-address --tls --port 9883")
    assert (recorded(home)["port"], recorded(home)["tls"]) == (9883, True)
    capsys.readouterr()
    ok(home, "broker-address")
    assert "hub.local:9883 over TLS" in capsys.readouterr().out
    for bad in ("--host mqtt://hub.local", "--host hub.local:1883", "--port 0"):
        with pytest.raises(SystemExit) as exit_:
            run(home, f"broker-address {bad}")
        assert exit_.value.code == 2
    assert recorded(home)["host"] == "hub.local"


def test_a_broker_file_with_an_unknown_key_is_refused_by_name(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "broker.json").write_text('{"hots": "hub.local", "port": 8883, "tls": true}\n')
    capsys.readouterr()
    assert run(home, "add-device --id door-1 --venue v1") == 1
    err = one_line(capsys.readouterr().err)
    assert "broker.json" in err and "hots" in err
    assert not (home / "units").exists()
    (home / "broker.json").write_text('{"host": "hub.local", "port": "8883"}\n')
    assert run(home, "add-device --id door-1 --venue v1") == 1
    assert "port" in one_line(capsys.readouterr().err)


# -- publishing ------------------------------------------------------------------------


def test_publish_with_nothing_recorded_or_plain_off_this_machine_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(home, "card --name 'Lê Thị Hà'")
    [card_id] = [p.stem for p in (home / "cards").iterdir()]
    before = (home / "registry.json").read_bytes()
    capsys.readouterr()
    assert run(home, "publish") == 2
    assert "no broker host" in one_line(capsys.readouterr().err)
    assert run(home, "publish --broker-host hub.example") == 2
    assert "--insecure" in one_line(capsys.readouterr().err)
    # Decided before the change: the card is not revoked when publishing would be refused.
    assert run(home, f"card-revoke --id {card_id} --publish-to hub.example:1883") == 2
    assert "plain MQTT to hub.example:1883" in one_line(capsys.readouterr().err)
    assert run(home, f"card-revoke --id {card_id} --publish-to") == 2
    assert "--publish-to HOST:PORT" in one_line(capsys.readouterr().err)
    assert (home / "registry.json").read_bytes() == before
    # Over TLS without the provisioning certificate there is nothing to connect with.
    ok(home, "broker-address --host hub.example")
    assert run(home, "publish") == 2
    assert "--ca-file, --cert-file and --key-file" in one_line(capsys.readouterr().err)


@pytest.mark.broker
def test_publish_leaves_the_fleet_keys_retained(
    home: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    ok(home, f"publish --broker-host {broker.host} --broker-port {broker.port}")
    out = capsys.readouterr().out
    assert "published 2 retained message(s)" in out  # the venue and the keys
    message = retained_registry(broker, 2)[topic_fleet_keys()]
    assert message.retain
    keys = decode_message(bytes(message.payload), FleetKeys)
    seal = raw_text((home / "keys" / "hub-seal.pub").read_bytes())
    card = raw_text((home / "keys" / "card-signing.pub.pem").read_bytes())
    assert keys.seal_public_key == seal
    assert keys.card_public_keys == [card]
    # The fingerprints the hub prints when its keys do not match.
    assert seal[:16] in out and card[:16] in out


@pytest.mark.broker
def test_publish_to_without_a_value_uses_the_recorded_broker(
    home: Path, broker: LocalBroker
) -> None:
    ok(home, f"broker-address --host {broker.host} --port {broker.port} --plain")
    ok(home, "add-device --id door-1 --venue v1 --publish-to")
    ok(home, "publish")
    got = retained_registry(broker, 3)
    assert set(got) == {
        "doorscan/v1/registry/venues/v1",
        "doorscan/v1/registry/units/door-1",
        topic_fleet_keys(),
    }
    assert load_config(home / "units" / "door-1.json").broker.port == broker.port


# -- the fleet's keys as text ----------------------------------------------------------


def test_public_key_text_is_the_raw_key_in_unpadded_base64url() -> None:
    # RFC 8032 test 1 and RFC 7748 section 6.1 (Alice): known raw public keys.
    ed = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ).public_key()
    x = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    ).public_key()
    assert public_key_text(ed) == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert public_key_text(x) == "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"
    assert base64.urlsafe_b64decode(public_key_text(x) + "=").hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )


def test_a_home_without_a_sealing_key_publishes_none_for_it(home: Path) -> None:
    for name in ("hub-seal.key", "hub-seal.pub"):
        (home / "keys" / name).unlink()  # a home made before sealing existed
    keys = fleet_keys(FleetHome(home), datetime.now(UTC))
    assert keys.seal_public_key is None
    card = raw_text((home / "keys" / "card-signing.pub.pem").read_bytes())
    assert keys.card_public_keys == [card]


# -- the other writers of unit configs -------------------------------------------------


def test_bundle_refuses_a_config_with_no_host_or_plain_to_another_machine(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    ok(home, "add-device --id door-1 --venue v1 --broker-host hub.example --insecure")
    config_path = home / "units" / "door-1.json"
    capsys.readouterr()
    assert run(home, f"bundle --config {config_path} --boot {boot}") == 2
    assert "--insecure" in one_line(capsys.readouterr().err)
    assert not (boot / BUNDLE_DIR).exists()
    ok(home, f"bundle --config {config_path} --boot {boot} --insecure")
    assert "warning" in one_line(capsys.readouterr().err)
    assert (boot / BUNDLE_DIR).is_dir()

    # A config written before the host was required: the unit would connect to itself.
    old = json.loads(config_path.read_text(encoding="utf-8"))
    del old["broker"]
    config_path.write_text(json.dumps(old), encoding="utf-8")
    assert run(home, f"bundle --config {config_path} --boot {boot} --force --insecure") == 2
    err = one_line(capsys.readouterr().err)
    assert "names no broker host" in err and "127.0.0.1:1883" in err


def test_enroll_server_with_no_broker_host_is_refused_before_it_listens(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "missing.pem"  # never opened: the refusal comes first
    command = f"enroll-server --listen 127.0.0.1:8443 --server-cert {pem} --server-key {pem}"
    assert run(home, command) == 2
    assert "no broker host" in one_line(capsys.readouterr().err)
