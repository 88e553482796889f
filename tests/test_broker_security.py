"""Broker identity and access, against a real Mosquitto running the generated files.

`provisioning broker-files` writes the CA, broker certificate, CRL, ACL and
mosquitto.conf; the broker here is started with exactly that mosquitto.conf. Clients
are real paho clients, the unit's real `MqttSync` and the hub's real `HubService`.

Mosquitto started as root drops to the `mosquitto` user and must then read the files,
so they live in a world-readable temporary folder (not pytest's 0700 tmp_path) and
are made mode 0644 there, the broker's private key included. That is a test-only
shortcut: on a real broker the key belongs to the mosquitto user, mode 0600.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.config import load_config
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.localbroker import find_mosquitto, free_port
from doorscan.mqtt import TlsFiles
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import (
    MAX_MESSAGE_BYTES,
    SUB_ALL_SCANS,
    TOPIC_ROOT,
    CardRevocations,
    FleetKeys,
    Scan,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    topic_ack,
    topic_card_revocations,
    topic_fleet_keys,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
)
from doorscan.wire.limits import BROKER_MAX_PACKET_BYTES
from hub.ingest import Ingestor
from hub.service import HubService
from provisioning.broker_pki import BrokerPKI
from provisioning.cli import main
from tests.hubstore import open_store
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

HOST = "127.0.0.1"
REFUSED_WAIT_S = 5.0


@dataclass(frozen=True)
class Fleet:
    home: Path
    broker_dir: Path
    units_dir: Path
    port: int
    pid_file: Path  # the broker's, for `revoke --reload-pid`

    def unit_files(self, unit_id: str) -> tuple[Path, Path, Path]:
        return (
            self.units_dir / "ca.pem",
            self.units_dir / f"{unit_id}-cert.pem",
            self.units_dir / f"{unit_id}-key.pem",
        )

    def role_files(self, role: str) -> tuple[Path, Path, Path]:
        d = self.broker_dir
        return d / "ca.pem", d / f"{role}-cert.pem", d / f"{role}-key.pem"


def _ok(home: Path, command: str) -> None:
    assert main(["--home", str(home), *shlex.split(command)]) == 0, command


def _tls_options(files: tuple[Path, Path, Path]) -> str:
    ca, cert, key = (shlex.quote(str(p)) for p in files)
    return f"--ca-file {ca} --cert-file {cert} --key-file {key}"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not open its TLS port")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed")
    root = Path(tempfile.mkdtemp(prefix="doorscan-tls-"))
    try:
        root.chmod(0o755)
        port = free_port()
        f = Fleet(root / "fleet", root / "broker", root / "units", port, root / "mosquitto.pid")
        _ok(f.home, "init")
        _ok(f.home, "add-venue --id v1 --name 'Chợ Pleiku'")
        for unit in ("unit-a", "unit-b", "unit-c", "unit-d"):
            _ok(
                f.home,
                f"add-device --id {unit} --venue v1 --tls --out {f.units_dir} "
                f"--broker-host {HOST} --broker-port {port} --data-dir data-{unit}",
            )
        _ok(
            f.home,
            f"broker-files --out {f.broker_dir} --port {port} --bind-address {HOST} "
            "--hub-workers 2",  # for tests/test_worker_tls.py, which reuses this fixture
        )
        _ok(f.home, "revoke unit-c")
        # The CLI wrote the CRL into the fleet home; the technician copies it over.
        shutil.copy(f.home / "keys" / "crl.pem", f.broker_dir / "crl.pem")
        for path in f.broker_dir.iterdir():
            path.chmod(0o644)  # test-only, see the module docstring
        f.broker_dir.chmod(0o755)
        log = (root / "mosquitto.log").open("wb")
        proc = subprocess.Popen(
            [str(find_mosquitto()), "-c", str(f.broker_dir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        f.pid_file.write_text(f"{proc.pid}\n", encoding="ascii")
        try:
            _wait_for_port(port, proc)
            yield f
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _client(client_id: str, files: tuple[Path, Path, Path] | None, ca: Path) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    if files is None:
        client.tls_set(ca_certs=str(ca))
    else:
        client.tls_set(ca_certs=str(files[0]), certfile=str(files[1]), keyfile=str(files[2]))
    return client


def _try_connect(client: mqtt.Client, port: int) -> bool:
    """True once the broker sends a successful CONNACK; False on any refusal or TLS error."""
    result: dict[str, bool] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        result.setdefault("ok", not reason.is_failure)
        done.set()

    def on_disconnect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        result.setdefault("ok", False)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(HOST, port)
    except OSError:  # ssl.SSLError is an OSError: the handshake itself was refused
        return False
    client.loop_start()
    done.wait(REFUSED_WAIT_S)
    ok = result.get("ok", False)
    if not ok:
        client.loop_stop()
    return ok


class _Listener:
    """A connected client that records (topic, payload) of everything it receives."""

    def __init__(self, client: mqtt.Client, port: int, *topics: str) -> None:
        self.client = client
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[bool] = []
        subscribed = threading.Event()
        client.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, reasons: Any, p: Any) -> None:
            self.granted.extend(not r.is_failure for r in reasons)
            subscribed.set()

        client.on_subscribe = on_subscribe
        assert _try_connect(client, port)
        if topics:
            client.subscribe([(t, 1) for t in topics])
            assert subscribed.wait(10)

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in self.received if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(listener: _Listener, topic: str, payload: bytes, retain: bool = False) -> None:
    listener.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def test_a_client_without_a_certificate_is_refused(fleet: Fleet) -> None:
    ca = fleet.broker_dir / "ca.pem"
    assert not _try_connect(_client("nobody", None, ca), fleet.port)
    plain = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="plain")
    assert not _try_connect(plain, fleet.port)
    # The same connection with the unit's own certificate gets in: the refusal is the cert's.
    unit = _client("unit-a", fleet.unit_files("unit-a"), ca)
    assert _try_connect(unit, fleet.port)
    unit.disconnect()
    unit.loop_stop()


def test_a_certificate_from_another_ca_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    stranger = BrokerPKI(tmp_path / "other-keys")
    stranger.ensure_ca()
    cert, key = stranger.issue_client("unit-a")  # the right name, the wrong signer
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    files = (fleet.broker_dir / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    assert not _try_connect(_client("unit-a", files, files[0]), fleet.port)


def test_a_revoked_unit_is_refused_and_marked_inactive(fleet: Fleet) -> None:
    ca = fleet.broker_dir / "ca.pem"
    assert not _try_connect(_client("unit-c", fleet.unit_files("unit-c"), ca), fleet.port)
    registry = (fleet.home / "registry.json").read_text(encoding="utf-8")
    assert '"active": false' in registry and '"unit_id": "unit-c"' in registry
    assert (fleet.home / "keys" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (fleet.units_dir / "unit-a-key.pem").stat().st_mode & 0o777 == 0o600


def test_a_unit_cannot_write_or_read_another_units_topics(fleet: Fleet) -> None:
    ca = fleet.broker_dir / "ca.pem"
    hub = _Listener(_client("hub-spy", fleet.role_files("hub"), ca), fleet.port, SUB_ALL_SCANS)
    a = _Listener(
        _client("unit-a", fleet.unit_files("unit-a"), ca),
        fleet.port,
        topic_ack("unit-a"),
        topic_ack("unit-b"),
    )
    b = _Listener(
        _client("unit-b", fleet.unit_files("unit-b"), ca), fleet.port, topic_ack("unit-b")
    )
    try:
        _publish(a, topic_scans("unit-b"), b"forged by unit-a")
        _publish(a, topic_scans("unit-a"), b"own scans")
        assert wait_for(lambda: hub.payloads(topic_scans("unit-a")) == [b"own scans"])
        assert hub.payloads(topic_scans("unit-b")) == []

        _publish(hub, topic_ack("unit-b"), b"for unit-b only")
        _publish(hub, topic_ack("unit-a"), b"for unit-a")
        assert wait_for(lambda: b.payloads(topic_ack("unit-b")) == [b"for unit-b only"])
        assert wait_for(lambda: a.payloads(topic_ack("unit-a")) == [b"for unit-a"])
        assert a.payloads(topic_ack("unit-b")) == []
        # A unit cannot write acks either: B would settle scans the hub never stored.
        _publish(a, topic_ack("unit-b"), b"fake ack")
        _publish(hub, topic_ack("unit-b"), b"second real ack")
        assert wait_for(lambda: len(b.payloads(topic_ack("unit-b"))) == 2)
        assert b"fake ack" not in b.payloads(topic_ack("unit-b"))
    finally:
        for listener in (hub, a, b):
            listener.close()


def test_a_unit_reads_only_its_own_config_and_cannot_write_one(fleet: Fleet) -> None:
    ca = fleet.broker_dir / "ca.pem"
    own, other = f"{TOPIC_ROOT}/units/unit-a/config", f"{TOPIC_ROOT}/units/unit-b/config"
    hub = _Listener(_client("hub-config", fleet.role_files("hub"), ca), fleet.port)
    b = _Listener(_client("unit-b", fleet.unit_files("unit-b"), ca), fleet.port, other)
    try:
        a = _Listener(_client("unit-a", fleet.unit_files("unit-a"), ca), fleet.port, own, other)
        try:
            _publish(a, other, b"unit-a sets unit-b's config")
            _publish(hub, other, b"hub config for b")
            _publish(hub, own, b"hub config for a")
            assert wait_for(lambda: a.payloads(own) == [b"hub config for a"])
            assert wait_for(lambda: b.payloads(other) == [b"hub config for b"])
            assert a.payloads(other) == []
        finally:
            a.close()
    finally:
        hub.close()
        b.close()


def test_unit_configs_own_certificate_writes_configs_and_reads_no_scan(fleet: Fleet) -> None:
    """`doorscan-hub unit-config`'s certificate (hub-config): unit configs, never scans or
    the registry; and it connects beside the running hub without pushing it off."""
    ca = fleet.broker_dir / "ca.pem"
    config = f"{TOPIC_ROOT}/units/unit-a/config"
    scans = f"{TOPIC_ROOT}/units/unit-a/scans"
    hub = _Listener(_client("hub-x", fleet.role_files("hub"), ca), fleet.port, scans)
    admin = _Listener(_client("admin", fleet.role_files("hub-config"), ca), fleet.port, scans)
    a = _Listener(_client("unit-a", fleet.unit_files("unit-a"), ca), fleet.port, config)
    try:
        _publish(admin, config, b"config from unit-config")
        # Retained: had the broker taken it, the spy below would be handed it.
        _publish(admin, topic_registry_venue("v9"), b"a venue it may not write", retain=True)
        _publish(a, scans, b"a scan")
        assert wait_for(lambda: a.payloads(config) == [b"config from unit-config"])
        assert wait_for(lambda: hub.payloads(scans) == [b"a scan"])  # the hub still there
        assert admin.payloads(scans) == []
        spy = _Listener(_client("spy", fleet.role_files("hub"), ca), fleet.port, "doorscan/v1/#")
        try:
            time.sleep(REFUSED_WAIT_S / 5)
            assert topic_registry_venue("v9") not in {t for t, _ in spy.received}
        finally:
            spy.close()
    finally:
        for listener in (hub, admin, a):
            listener.close()


def test_a_scan_travels_from_unit_to_hub_and_is_acked_over_tls(
    fleet: Fleet, hub_db: str, tmp_path: Path
) -> None:
    ca = fleet.broker_dir / "ca.pem"
    provisioning = _Listener(
        _client("provisioning", fleet.role_files("provisioning"), ca), fleet.port
    )
    try:
        venue = VenueRecord(venue_id="v1", name="Chợ Pleiku")
        unit = UnitRecord(unit_id="unit-a", venue_id="v1")
        _publish(provisioning, topic_registry_venue("v1"), encode_message(venue), retain=True)
        _publish(provisioning, topic_registry_unit("unit-a"), encode_message(unit), retain=True)
    finally:
        provisioning.close()
    config = load_config(fleet.units_dir / "unit-a.json")
    assert config.broker.cert_file == fleet.units_dir / "unit-a-cert.pem"
    person = make_people(1, seed=3)[0]
    scan = Scan(
        scan_id="tls-scan-0001",
        venue_id="v1",
        scanned_at=datetime.now(UTC).replace(microsecond=0),
        qr_text=cccd_text(person),
    )
    tls = TlsFiles(*fleet.role_files("hub"))
    with (
        open_store(hub_db) as store,
        HubService(Ingestor(store), HOST, fleet.port, tls=tls) as hub,
        ScanJournal(tmp_path / "journal.db") as journal,
    ):
        assert hub.wait_connected(20)
        assert wait_for(lambda: store.unit("unit-a") is not None)
        journal.record(scan)
        with MqttSync("unit-a", journal, config.broker) as sync:
            assert sync.wait_connected(20)
            sync.notify()
            assert wait_for(lambda: journal.backlog() == 0)
            assert sync.acks_received >= 1
        assert hub.acks_sent >= 1
        assert store.counts()["scans"] == 1


def _retained(fleet: Fleet, topic: str, count: int) -> list[bytes]:
    """The retained messages on `topic` (a filter), read the way the hub reads them."""
    ca = fleet.broker_dir / "ca.pem"
    hub = _Listener(_client("hub-reader", fleet.role_files("hub"), ca), fleet.port, topic)
    try:
        wait_for(lambda: len(hub.received) >= count)
        return [payload for _, payload in hub.received]
    finally:
        hub.close()


def test_publish_over_tls_with_the_provisioning_certificate(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = _tls_options(fleet.role_files("provisioning"))
    _ok(fleet.home, f"publish --broker-host {HOST} --broker-port {fleet.port} {tls}")
    assert "published 6 retained message(s)" in capsys.readouterr().out  # with the fleet keys
    payloads = _retained(fleet, topic_registry_unit("unit-c"), 1)
    # Only this publish carries unit-c, and revoke made it inactive in the registry.
    assert [decode_message(p, UnitRecord).active for p in payloads] == [False]
    assert _retained(fleet, topic_registry_unit("unit-b"), 1) != []


def test_publish_finds_the_tls_listener_broker_files_recorded(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """No port, no TLS files: the home recorded them when `broker-files` wrote them."""
    recorded = json.loads((fleet.home / "broker.json").read_text(encoding="utf-8"))
    assert recorded == {
        "host": None,  # the fixture gave no --host: only the port and files are known
        "port": fleet.port,
        "tls": True,
        "ca_file": str((fleet.broker_dir / "ca.pem").resolve()),
        "cert_file": str((fleet.broker_dir / "provisioning-cert.pem").resolve()),
        "key_file": str((fleet.broker_dir / "provisioning-key.pem").resolve()),
    }
    capsys.readouterr()
    _ok(fleet.home, f"publish --broker-host {HOST} --timeout-s 5")
    assert f"to {HOST}:{fleet.port} over TLS" in capsys.readouterr().out
    [payload] = _retained(fleet, topic_fleet_keys(), 1)
    assert decode_message(payload, FleetKeys).card_public_keys


def test_a_unit_certificate_cannot_publish_the_registry(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    where = f"--publish-to {HOST}:{fleet.port} --timeout-s 5"
    provisioning = _tls_options(fleet.role_files("provisioning"))
    _ok(fleet.home, f"add-venue --id v-acl --name 'Trạm y tế' {where} {provisioning}")
    unit = _tls_options(fleet.unit_files("unit-a"))
    forged = ["--home", str(fleet.home), *shlex.split("add-venue --id v-acl --name Forged")]
    assert main([*forged, *shlex.split(f"{where} {unit}")]) == 1
    err = capsys.readouterr().err
    assert topic_registry_venue("v-acl") in err and "Not authorized" in err
    assert "the registry change is saved" in err
    # The broker kept the provisioning tool's message, not the unit's.
    [payload] = _retained(fleet, topic_registry_venue("v-acl"), 1)
    assert decode_message(payload, VenueRecord).name == "Trạm y tế"


def test_publish_checks_the_broker_against_the_given_ca(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = BrokerPKI(tmp_path / "other-keys")
    stranger.ensure_ca()
    _, cert, key = fleet.role_files("provisioning")
    tls = _tls_options((stranger.ca_path, cert, key))
    args = f"publish --broker-host {HOST} --broker-port {fleet.port} --timeout-s 5 {tls}"
    assert main(["--home", str(fleet.home), *shlex.split(args)]) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


def test_the_tls_files_go_together(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, _ = fleet.role_files("provisioning")
    args = f"publish --broker-host {HOST} --ca-file {ca} --cert-file {cert}"
    with pytest.raises(SystemExit) as exit_:
        main(["--home", str(fleet.home), *shlex.split(args)])
    assert exit_.value.code == 2
    assert "--ca-file, --cert-file and --key-file go together" in capsys.readouterr().err


def test_revoke_takes_a_connected_unit_out_without_a_broker_restart(fleet: Fleet) -> None:
    """`revoke --crl-to --reload-pid`: the hub learns at once, the broker on SIGHUP.

    unit-d is online when it is revoked. The inactive record reaches the hub's side of
    the broker (the hub then refuses its scans: test_bad_mqtt_input's `revoked_unit`);
    Mosquitto rereads the CRL on SIGHUP, so unit-d cannot connect again, while unit-a,
    the control, still can.
    """
    ca = fleet.broker_dir / "ca.pem"
    online = _Listener(_client("unit-d", fleet.unit_files("unit-d"), ca), fleet.port)
    try:
        assert _try_connect(_client("unit-d", fleet.unit_files("unit-d"), ca), fleet.port)
        tls = _tls_options(fleet.role_files("provisioning"))
        _ok(
            fleet.home,
            f"revoke unit-d --publish-to {HOST}:{fleet.port} {tls} "
            f"--crl-to {fleet.broker_dir / 'crl.pem'} --reload-pid {fleet.pid_file}",
        )
        records = [
            decode_message(p, UnitRecord)
            for p in _retained(fleet, topic_registry_unit("unit-d"), 1)
        ]
        assert [r.active for r in records] == [False]
        # The reload is asynchronous: wait until a new connection is refused.
        assert wait_for(
            lambda: not _try_connect(_client("unit-d", fleet.unit_files("unit-d"), ca), fleet.port),
            timeout_s=20,
        )
        assert _try_connect(_client("unit-a", fleet.unit_files("unit-a"), ca), fleet.port)
    finally:
        online.close()


def test_revoke_says_when_the_broker_cannot_be_signalled(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pid").write_text("not a pid\n", encoding="ascii")
    code = main(
        ["--home", str(fleet.home), "revoke", "unit-c", "--reload-pid", str(tmp_path / "pid")]
    )
    assert code == 1
    assert "cannot read the broker's pid" in capsys.readouterr().err


def test_the_broker_forwards_no_payload_over_the_wire_limit(fleet: Fleet) -> None:
    """`broker-files` sets the wire contract's size limit: an oversize message never
    reaches the hub (a first build's 50 MB message became a 67 MB dead letter)."""
    ca = fleet.broker_dir / "ca.pem"
    hub = _Listener(_client("hub-size", fleet.role_files("hub"), ca), fleet.port, SUB_ALL_SCANS)
    unit = _Listener(_client("unit-b", fleet.unit_files("unit-b"), ca), fleet.port)
    try:
        _publish(unit, topic_scans("unit-b"), b"x" * (MAX_MESSAGE_BYTES + 1))
        _publish(unit, topic_scans("unit-b"), b"x" * MAX_MESSAGE_BYTES)  # at the limit: goes
        assert wait_for(lambda: len(hub.payloads(topic_scans("unit-b"))) == 1)
        time.sleep(0.5)
        assert [len(p) for p in hub.payloads(topic_scans("unit-b"))] == [MAX_MESSAGE_BYTES]
    finally:
        hub.close()
        unit.close()


def test_the_broker_cuts_off_a_client_sending_a_packet_past_the_limit(fleet: Fleet) -> None:
    """`max_packet_size`: the broker need not read (and hold) a huge packet to refuse it."""
    ca = fleet.broker_dir / "ca.pem"
    unit = _client("unit-b", fleet.unit_files("unit-b"), ca)
    assert _try_connect(unit, fleet.port)
    dropped = threading.Event()
    unit.on_disconnect = lambda c, u, f, reason, p: dropped.set()
    unit.publish(topic_scans("unit-b"), b"x" * (BROKER_MAX_PACKET_BYTES + 1), qos=1)
    try:
        assert dropped.wait(10), "the broker kept a client that sent an oversize packet"
    finally:
        unit.loop_stop()


def test_units_read_the_card_revocation_list_and_cannot_write_it(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    _ok(fleet.home, f"card --name 'Lê Thị Hà' --out {fleet.home / 'acl-card.png'}")
    card_id = capsys.readouterr().out.split()[1]
    tls = _tls_options(fleet.role_files("provisioning"))
    _ok(
        fleet.home,
        f"card-revoke --id {card_id} --publish-to {HOST}:{fleet.port} --timeout-s 5 {tls}",
    )
    topic = topic_card_revocations()
    ca = fleet.broker_dir / "ca.pem"
    unit = _Listener(_client("unit-a", fleet.unit_files("unit-a"), ca), fleet.port, topic)
    try:
        assert unit.granted == [True]
        assert wait_for(lambda: len(unit.payloads(topic)) == 1)
        listed = decode_message(unit.payloads(topic)[0], CardRevocations)
        assert card_id in listed.by_card()
        # A unit cannot empty or forge the list: the broker drops its publish.
        forged = CardRevocations(version=listed.version + 1, issued_at=listed.issued_at, revoked=[])
        _publish(unit, topic, encode_message(forged), retain=True)
    finally:
        unit.close()
    [kept] = _retained(fleet, topic, 1)
    assert decode_message(kept, CardRevocations) == listed
