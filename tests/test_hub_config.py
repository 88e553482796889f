"""The hub's config file, its preflight check, and a hub that refuses to lose scans.

Everything as an operator meets it: a TOML file written like docs/deploy.md writes it,
``python -m hub check|serve|web --config FILE`` as documented, a real Mosquitto, the
fleet's `FleetKeys` and the units' sealed batches published as the wire contract says
(JSON on the documented topics), the unit's ack read off the broker.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from doorscan.cards import CardSigner
from doorscan.localbroker import LocalBroker, free_port
from doorscan.sealing import generate_key, save_private_key
from doorscan.wire import (
    Ack,
    FleetKeys,
    UnitRecord,
    VenueRecord,
    decode_message,
    encode_message,
    raw_key_text,
    topic_ack,
    topic_fleet_keys,
    topic_registry_unit,
    topic_registry_venue,
    topic_scans,
)
from hub.cli import main
from hub.ingest import Ingestor
from hub.service import HubService
from hub.vault import ENV_VAULT_KEY
from hub.workers import EXIT_REFUSED
from tests.hubstore import open_store, vault_key_file
from tests.test_broker_security import Fleet
from tests.test_broker_security import fleet as fleet
from tests.test_replay import sealed_batch
from tests.waiting import wait_for

SENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _config(folder: Path, text: str) -> Path:
    path = folder / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _basic(broker: LocalBroker, extra: str = "") -> str:
    """A hub config as an operator writes it: the database relative to the file."""
    return (
        f'[database]\nurl = "hub.db"\nvault_key = "{vault_key_file()}"\n\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n\n{extra}'
    )


@pytest.fixture
def no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vault key comes from the config file alone, as in a deployment."""
    monkeypatch.delenv(ENV_VAULT_KEY, raising=False)


# -- the file ------------------------------------------------------------------------------


def test_an_unknown_key_is_refused_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_vault_env: None
) -> None:
    path = _config(tmp_path, '[keys]\nseal-key = "hub-seal.key"\n[brokr]\nhost = "x"\n')
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "keys.seal-key: unknown key" in err and "brokr: unknown key" in err, err


def test_paths_are_relative_to_the_file_and_flags_win(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str], no_vault_env: None
) -> None:
    path = _config(tmp_path, _basic(broker))
    # Not there yet: check says so and makes nothing (serve makes it).
    assert main(["check", "--config", str(path)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert f"warn  database    no database at {tmp_path / 'hub.db'} yet" in out, out
    assert not (tmp_path / "hub.db").exists()
    other = tmp_path / "elsewhere.db"
    with open_store(str(other)):
        pass
    assert main(["check", "--config", str(path), "--db", str(other)]) == 0
    assert f"ok    database    {other} opened" in capsys.readouterr().out


def test_a_secret_can_be_a_systemd_credential(
    tmp_path: Path,
    broker: LocalBroker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_vault_env: None,
) -> None:
    text = _basic(broker).replace(str(vault_key_file()), "credential:hub-vault.key")
    path = _config(tmp_path, text)
    assert main(["check", "--config", str(path)]) == 1
    assert "there is no $CREDENTIALS_DIRECTORY" in capsys.readouterr().out
    # Outside the service, a flag given instead still works.
    assert main(["check", "--config", str(path), "--vault-key", str(vault_key_file())]) == 0
    capsys.readouterr()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hub-vault.key").write_bytes(vault_key_file().read_bytes())
    (credentials / "hub-vault.key").chmod(0o400)  # as systemd hands credentials over
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert main(["check", "--config", str(path)]) == 0
    assert f"{credentials / 'hub-vault.key'} read" in capsys.readouterr().out


def test_no_broker_host_and_plain_mqtt_across_the_network_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "hub.db")
    assert main(["unit-config", "door-1", "debounce_s=60", "--db", db]) == 2
    assert "no broker host" in capsys.readouterr().err
    plain = ["unit-config", "door-1", "debounce_s=60", "--db", db, "--broker-host", "mq.example"]
    assert main(plain) == 2
    assert "plain MQTT to mq.example" in capsys.readouterr().err


# -- the check ---------------------------------------------------------------------------


def test_check_reaches_a_tls_broker_with_the_hubs_certificate(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_vault_env: None
) -> None:
    ca, cert, key = fleet.role_files("hub")
    tls = f'ca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    text = (
        f'[database]\nurl = "hub.db"\nvault_key = "{vault_key_file()}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {fleet.port}\n{tls}'
    )
    assert main(["check", "--config", str(_config(tmp_path, text))]) == 0
    out = capsys.readouterr().out
    assert f"127.0.0.1:{fleet.port} TLS handshake as doorscan-hub accepted" in out, out
    # A unit's certificate is the fleet's too, but a revoked one is refused at the door.
    revoked = fleet.unit_files("unit-c")
    bad = text.replace(str(cert), str(revoked[1])).replace(str(key), str(revoked[2]))
    assert main(["check", "--config", str(_config(tmp_path, bad))]) == 1
    assert "FAIL  broker" in capsys.readouterr().out


# -- a hub missing the fleet's seal key ----------------------------------------------------


def _publish(broker: LocalBroker, topic: str, payload: bytes, retain: bool) -> None:
    """What a party sends, with the Mosquitto client an outsider has."""
    command = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1"]
    command += ["-t", topic, "-s", *(["-r"] if retain else [])]
    subprocess.run(command, input=payload, check=True, timeout=30)


class _AckListener:
    """The unit's side: its ack topic, subscribed before anything is sent."""

    def __init__(self, broker: LocalBroker, unit_id: str) -> None:
        self.acks: list[Ack] = []
        self._ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="door-1-ears")
        self._client.on_message = lambda c, u, m: self.acks.append(
            decode_message(bytes(m.payload), Ack)
        )
        self._client.on_subscribe = lambda *a: self._ready.set()
        self._client.on_connect = lambda c, *a: c.subscribe(topic_ack(unit_id), qos=1)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._ready.wait(20)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def ack_listener(broker: LocalBroker) -> Iterator[_AckListener]:
    listener = _AckListener(broker, "door-1")
    yield listener
    listener.close()


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_hub_without_the_fleets_seal_key_refuses_to_start_and_loses_no_scan(
    broker: LocalBroker,
    tmp_path: Path,
    ack_listener: _AckListener,
    capsys: pytest.CaptureFixture[str],
    no_vault_env: None,
) -> None:
    seal_key, cards = generate_key(), CardSigner.generate()
    save_private_key(seal_key, tmp_path / "hub-seal.key")
    (tmp_path / "card-signing.pub.pem").write_bytes(cards.public_pem())
    fleet_keys = FleetKeys(
        issued_at=SENT,
        seal_public_key=raw_key_text(seal_key.public_key().public_bytes_raw()),
        card_public_keys=[raw_key_text(cards.public_key.public_bytes_raw())],
    )
    wanted = fleet_keys.seal_public_key
    assert wanted is not None
    venue = VenueRecord(venue_id="hospital", name="Bệnh viện")
    _publish(broker, topic_registry_venue("hospital"), encode_message(venue), retain=True)
    unit = UnitRecord(unit_id="door-1", venue_id="hospital")
    _publish(broker, topic_registry_unit("door-1"), encode_message(unit), retain=True)
    _publish(broker, topic_fleet_keys(), encode_message(fleet_keys), retain=True)
    config = _config(tmp_path, _basic(broker, '[keys]\ncard_keys = ["card-signing.pub.pem"]\n'))

    # First start: the fleet's keys arrive, the hub cannot open what the units seal.
    log = tmp_path / "serve-1.log"
    first = _serve(config, log)
    assert first.wait(60) == EXIT_REFUSED, log.read_text()
    output = log.read_text()
    assert "no seal key" in output and wanted[:16] in output and "keys.seal_key" in output
    assert "hub ready" not in output and "Traceback" not in output, output

    # A door sends while the hub is down; the broker keeps it for the hub's session.
    _publish(
        broker,
        topic_scans("door-1"),
        encode_message(sealed_batch(1, seal_key.public_key())),
        retain=False,
    )

    # Second start: refused before it takes anything, from the keys the store kept.
    log = tmp_path / "serve-2.log"
    second = _serve(config, log)
    assert second.wait(60) == EXIT_REFUSED, log.read_text()
    output = log.read_text()
    assert "refuses to start" in output and "FAIL  fleet keys" in output, output
    assert wanted[:16] in output
    assert main(["check", "--config", str(config)]) == 1
    assert f"no seal key: the fleet's units seal scans to the hub's public key {wanted[:16]}" in (
        capsys.readouterr().out
    )
    with open_store(str(tmp_path / "hub.db")) as store:
        assert store.dead_letters() == [] and store.counts()["scans"] == 0

    # Fixed as the message says: the scan waiting at the broker is stored and acked.
    with config.open("a") as file:
        file.write('seal_key = "hub-seal.key"\n')
    assert main(["check", "--config", str(config)]) == 0, capsys.readouterr()
    assert "ok    fleet keys" in capsys.readouterr().out
    log = tmp_path / "serve-3.log"
    third = _serve(config, log)
    try:
        assert wait_for(lambda: any(a.stored for a in ack_listener.acks), 60), log.read_text()
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(30) == 0, log.read_text()
    assert sorted(ack_listener.acks[-1].stored) == [f"sealed-1-{i:04d}" for i in range(3)]
    with open_store(str(tmp_path / "hub.db")) as store:
        assert store.counts()["scans"] == 3 and store.dead_letters() == []


def test_a_batch_arriving_while_the_keys_do_not_match_stays_with_the_broker(
    broker: LocalBroker, tmp_path: Path, ack_listener: _AckListener
) -> None:
    """The running hub's side: once the fleet's keys show a mismatch, a batch is neither
    stored, nor dead-lettered, nor acked; a hub with the right key gets it again from its
    persistent session and stores it."""
    seal_key = generate_key()
    fleet_keys = FleetKeys(
        issued_at=SENT, seal_public_key=raw_key_text(seal_key.public_key().public_bytes_raw())
    )
    db = str(tmp_path / "hub.db")
    with open_store(db) as store:
        store.upsert_venue(VenueRecord(venue_id="hospital", name="Bệnh viện"))
        store.upsert_unit(UnitRecord(unit_id="door-1", venue_id="hospital"))
        problems: list[str] = []
        blind = Ingestor(store, max_scans_per_minute=0, on_key_mismatch=problems.extend)
        with HubService(blind, broker.host, broker.port, client_id="hub-under-test") as hub:
            assert hub.wait_connected(20)
            _publish(broker, topic_fleet_keys(), encode_message(fleet_keys), retain=True)
            assert wait_for(lambda: bool(problems), 20)
            batch = encode_message(sealed_batch(1, seal_key.public_key()))
            _publish(broker, topic_scans("door-1"), batch, retain=False)
            assert not wait_for(lambda: bool(ack_listener.acks), 3)
        assert store.dead_letters() == [] and store.counts()["scans"] == 0
        assert "no seal key" in problems[0]
        fixed = Ingestor(store, sealing_key=seal_key, max_scans_per_minute=0)
        with HubService(fixed, broker.host, broker.port, client_id="hub-under-test") as hub:
            assert wait_for(lambda: bool(ack_listener.acks), 20)
        assert len(ack_listener.acks[0].stored) == 3
        assert store.counts()["scans"] == 3 and store.dead_letters() == []


# -- HTTPS -------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "http-cert.pem", folder / "http-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_the_hub_serves_https_itself_and_its_session_cookie_is_secure(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str], no_vault_env: None
) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    http = f'listen = "127.0.0.1:{port}"\ncert_file = "{cert.name}"\nkey_file = "{key.name}"\n'
    config = _config(tmp_path, _basic(broker, f"[http]\n{http}"))
    (tmp_path / "pw.txt").write_text("a long enough password\n")
    add = ["user", "add", "--config", str(config), "--id", "tracer-1", "--name", "Mai"]
    assert main([*add, "--role", "tracer", "--password-file", str(tmp_path / "pw.txt")]) == 0
    assert main(["check", "--config", str(config)]) == 0
    assert f"https://127.0.0.1:{port}, certificate valid until" in capsys.readouterr().out
    log = tmp_path / "web.log"
    with log.open("w") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "hub", "web", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: "hub web ready" in log.read_text() or web.poll() is not None, 60)
        assert f"https=127.0.0.1:{port}" in log.read_text(), log.read_text()
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as client:
            english = client.get("/login", params={"lang": "en"})
            login = client.post(
                "/login",
                data={"user_id": "tracer-1", "password": "a long enough password"},
                headers={"Origin": f"https://127.0.0.1:{port}"},
            )
        cookies = login.headers.get_list("set-cookie")
        session = [c for c in cookies if c.lower().startswith("doorscan_session")]
        assert session and "secure" in session[0].lower(), (login.status_code, cookies)
        [lang] = english.headers.get_list("set-cookie")
        assert lang.startswith("lang=en") and "secure" in lang.lower(), lang
    finally:
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0, log.read_text()


def test_plain_http_on_a_public_address_needs_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "hub.db")
    assert main(["web", "--db", db, "--http", f"0.0.0.0:{free_port()}"]) == 2
    assert "plain HTTP on 0.0.0.0" in capsys.readouterr().err


def test_fleet_keys_shows_and_forgets_the_kept_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The way out when a wrong fleet home published its keys: the next start compares
    with the retained message instead of the kept copy."""
    seal = raw_key_text(generate_key().public_key().public_bytes_raw())
    db = str(tmp_path / "hub.db")
    with open_store(db) as store:
        keys = FleetKeys(issued_at=SENT, seal_public_key=seal)
        store.set_fleet_keys(encode_message(keys).decode(), SENT)
    assert main(["fleet-keys", "--db", db]) == 0
    assert f"sealing key {seal[:16]}" in capsys.readouterr().out
    with open_store(db) as store:
        assert store.fleet_keys() is not None  # shown, not forgotten
    assert main(["fleet-keys", "--db", db, "--forget"]) == 0
    assert "forgotten" in capsys.readouterr().out
    with open_store(db) as store:
        assert store.fleet_keys() is None
    assert main(["fleet-keys", "--db", db]) == 0
    assert "no fleet keys kept" in capsys.readouterr().out


def test_fleet_keys_kept_by_the_store(hub_db: str) -> None:
    payload = json.dumps({"v": 1, "schema": "doorscan.fleet-keys"})
    with open_store(hub_db) as store:
        assert store.fleet_keys() is None
        store.set_fleet_keys(payload, SENT)
        store.set_fleet_keys(payload + " ", SENT + timedelta(seconds=1))
        assert store.fleet_keys() == (payload + " ", SENT + timedelta(seconds=1))
