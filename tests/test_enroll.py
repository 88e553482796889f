"""Field enrollment on real parts: a segno-rendered QR read by the real decoder, a real
HTTPS enrollment server with a certificate from the fleet CA, real keys, real SQLite,
and a real Mosquitto (started with `broker-files` output) that the new unit talks to.

Files live in a world-readable temporary folder (as in test_broker_security.py) because
Mosquitto started as root drops to the `mosquitto` user and must read them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import segno
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from device.cli import main as device_main
from device.config import load_config
from device.decoders import make_decoder
from device.enroll import EnrollmentConfig, enroll_unit, load_enrollment_config
from device.frames import load_grey
from device.indicators import PATTERNS, Feedback
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.enrollment import EnrollmentSigner, code_digest, parse_enrollment
from doorscan.localbroker import find_mosquitto, free_port
from doorscan.synthetic import cccd_text, make_people
from doorscan.wire import Scan, ScanBatch, UnitRecord, VenueRecord, decode_message, topic_scans
from provisioning.cli import main as provisioning
from provisioning.enroll import enroll_key_paths, enrollment_signer, issue_enrollment, save_qr_png
from provisioning.enroll_http import EnrollmentServer
from provisioning.enroll_server import CodeLedger, EnrollmentService, EnrollRefused
from provisioning.fleet import FleetHome
from provisioning.publish import PublishError
from tests.test_indicators import expected_history, pin_history
from tests.waiting import wait_for

HOST = "127.0.0.1"


@dataclass
class Fleet:
    root: Path
    home: FleetHome
    broker_dir: Path
    broker_port: int

    @property
    def ca(self) -> Path:
        return self.home.keys_dir / "ca.pem"


@dataclass
class Server:
    fleet: Fleet
    url: str
    bodies: list[bytes] = field(default_factory=list)
    service: EnrollmentService | None = None


def _ok(home: Path, command: str) -> None:
    assert provisioning(["--home", str(home), *shlex.split(command)]) == 0, command


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="doorscan-enroll-"))
    try:
        root.chmod(0o755)
        port = free_port()
        home = root / "fleet"
        _ok(home, "init")
        _ok(home, "add-venue --id v1 --name 'Chợ Pleiku'")
        _ok(home, "add-venue --id v2 --name 'Bệnh viện Gia Lai'")
        _ok(home, f"broker-files --out {root / 'broker'} --port {port} --bind-address {HOST}")
        yield Fleet(root, FleetHome(home), root / "broker", port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start_server(
    fleet: Fleet, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> tuple[Server, EnrollmentServer]:
    service = EnrollmentService(fleet.home, HOST, fleet.broker_port, clock=clock)
    bodies: list[bytes] = []
    # The broker's certificate from broker-files: the fleet CA signed it for 127.0.0.1.
    http = EnrollmentServer(
        service,
        HOST,
        0,
        fleet.broker_dir / "broker-cert.pem",
        fleet.broker_dir / "broker-key.pem",
        on_body=bodies.append,
    ).start()
    return Server(fleet, f"https://{HOST}:{http.port}", bodies, service), http


@pytest.fixture
def server(fleet: Fleet) -> Iterator[Server]:
    srv, http = _start_server(fleet)
    with http:
        yield srv


def _qr_folder(folder: Path, *texts: str) -> Path:
    """One PNG per text, in order, rendered by segno; enrollment QRs by provisioning's own."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        path = folder / f"{i:02d}.png"
        if text.startswith("DSE1|"):
            save_qr_png(text, path)
        else:
            segno.make(text, error="m", encoding="utf-8").save(str(path), scale=6, border=4)
    return folder


def _bootstrap(server: Server, tmp: Path, frames: Path, **extra: Any) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "bootstrap.json"
    path.write_text(
        json.dumps(
            {
                "server_url": server.url,
                "ca_file": str(server.fleet.ca),
                "enroll_keys": [str(enroll_key_paths(server.fleet.home)[1])],
                "data_dir": "data",
                "frames": {"source": "files", "path": str(frames)},
                "deadline_s": 60,
                **extra,
            }
        )
    )
    return path


def _enroll(config: EnrollmentConfig, factory: MockFactory | None = None) -> tuple[Any, list[str]]:
    lines: list[str] = []
    result = enroll_unit(config, pin_factory=factory or MockFactory(), report=lines.append)
    return result, lines


def _private_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the whole path ------------------------------------------------------------------


def test_device_enroll_reads_the_qr_makes_its_key_and_gets_a_certificate(
    server: Server, tmp_path: Path
) -> None:
    issued = issue_enrollment(server.fleet.home, "v1")
    visitor = cccd_text(make_people(1, seed=4)[0])
    # A visitor's code first: enrollment mode ignores it (no refusal, nothing sent).
    frames = _qr_folder(tmp_path / "frames", visitor, issued.text)
    # As on a Pi: keys in the data folder, unit.json where the service reads it.
    bootstrap = _bootstrap(
        server, tmp_path, frames, unit_id="v1-door-7", config_file="etc/doorscan/unit.json"
    )
    done = subprocess.run(
        [sys.executable, "-m", "device", "enroll", "--config", str(bootstrap)],
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enrolled as unit v1-door-7 at venue v1" in done.stdout
    assert "refused" not in done.stdout

    data = tmp_path / "data"
    key_path = data / "v1-door-7-key.pem"
    assert key_path.stat().st_mode & 0o777 == 0o600
    key = _private_pem(key_path)
    cert = x509.load_pem_x509_certificate((data / "v1-door-7-cert.pem").read_bytes())
    assert _spki(cert.public_key()) == _spki(key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "v1-door-7"
    ca = x509.load_pem_x509_certificate(server.fleet.ca.read_bytes())
    cert.verify_directly_issued_by(ca)

    # What went over the wire: one request, with a CSR for that key and nothing private.
    assert len(server.bodies) == 1
    body = server.bodies[0]
    sent = json.loads(body)
    assert set(sent) == {"token", "csr"}
    csr = x509.load_pem_x509_csr(sent["csr"].encode())
    assert _spki(csr.public_key()) == _spki(key.public_key())
    assert key_path.read_bytes() not in body
    assert b"PRIVATE" not in body
    private_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    for encoded in (secret, secret.hex().encode(), private_der):
        assert encoded not in body

    # The registry and the one-time ledger know it; the unit config runs as-is.
    with server.fleet.home.registry() as registry:
        unit = registry.unit("v1-door-7")
    assert unit is not None and unit.venue_id == "v1" and unit.active
    assert server.service is not None and server.service.ledger.spent_count() >= 1
    assert not (data / "unit.json").exists()
    config = load_config(tmp_path / "etc" / "doorscan" / "unit.json")
    assert config.unit_id == "v1-door-7" and config.venue_id == "v1"
    assert config.broker.key_file == key_path.resolve()
    assert config.data_dir == data.resolve()
    assert config.broker.port == server.fleet.broker_port
    assert config.broker.key_file == key_path
    assert config.seal_key is not None and config.seal_key.read_bytes() == (
        server.fleet.home.seal_public_path.read_bytes()
    )
    assert [p.read_bytes() for p in config.card_keys] == [
        server.fleet.home.public_key_path.read_bytes()
    ]


def _listen(fleet: Fleet, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    received: list[bytes] = []
    subscribed = threading.Event()
    hub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="hub-listener",
        protocol=mqtt.MQTTv311,
    )
    d = fleet.broker_dir
    hub.tls_set(
        ca_certs=str(d / "ca.pem"), certfile=str(d / "hub-cert.pem"), keyfile=str(d / "hub-key.pem")
    )
    hub.on_message = lambda c, u, m: received.append(bytes(m.payload))
    hub.on_subscribe = lambda *args: subscribed.set()
    hub.on_connect = lambda c, *args: c.subscribe(topic, 1)
    hub.connect(HOST, fleet.broker_port)
    hub.loop_start()
    assert subscribed.wait(20)
    return hub, received


@pytest.mark.broker
def test_the_enrolled_unit_sends_a_scan_over_tls_with_its_new_certificate(
    server: Server, tmp_path: Path
) -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed")
    fleet = server.fleet
    frames = _qr_folder(tmp_path / "frames", issue_enrollment(fleet.home, "v2").text)
    bootstrap = load_enrollment_config(_bootstrap(server, tmp_path, frames))
    enrolled, lines = _enroll(bootstrap)
    assert enrolled is not None, lines
    assert enrolled.unit_id.startswith("v2-")  # no unit id configured: venue + random
    config = load_config(enrolled.config_path)

    for path in fleet.broker_dir.iterdir():
        path.chmod(0o644)  # test-only: Mosquitto as root reads them as `mosquitto`
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        [str(find_mosquitto()), "-c", str(fleet.broker_dir / "mosquitto.conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def port_open() -> bool:
            try:
                with socket.create_connection((HOST, fleet.broker_port), timeout=0.2):
                    return True
            except OSError:
                return False

        assert wait_for(port_open), "mosquitto did not open its TLS port"
        hub, received = _listen(fleet, topic_scans(enrolled.unit_id))
        try:
            scan = Scan(
                scan_id="enrolled-scan-01",
                venue_id="v2",
                scanned_at=datetime.now(UTC).replace(microsecond=0),
                qr_text=cccd_text(make_people(1, seed=9)[0]),
            )
            with ScanJournal(tmp_path / "journal.db") as journal:
                journal.record(scan)
                with MqttSync(enrolled.unit_id, journal, config.broker) as sync:
                    assert sync.wait_connected(20)
                    sync.notify()
                    assert wait_for(lambda: len(received) >= 1)
            batch = decode_message(received[0], ScanBatch)
            assert batch.unit_id == enrolled.unit_id
            assert [s.scan_id for s in batch.scans] == ["enrolled-scan-01"]
        finally:
            hub.disconnect()
            hub.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_unit_shows_the_enrolled_pattern_and_nothing_else(
    server: Server, tmp_path: Path
) -> None:
    frames = _qr_folder(
        tmp_path / "frames", "WIFI:S:cafe;P:123;;", issue_enrollment(server.fleet.home, "v1").text
    )
    factory = MockFactory()
    config = load_enrollment_config(_bootstrap(server, tmp_path, frames, unit_id="v1-door-8"))
    enrolled, lines = _enroll(config, factory)
    assert enrolled is not None, lines
    assert pin_history(factory) == expected_history(PATTERNS[Feedback.ENROLLED])


# -- refusals at the unit, before anything is sent -------------------------------------


def _expired(fleet: Fleet) -> str:
    past = datetime.now(UTC) - timedelta(hours=1)
    return issue_enrollment(fleet.home, "v1", timedelta(minutes=15), now=past).text


def _altered(fleet: Fleet) -> str:
    text = issue_enrollment(fleet.home, "v1").text
    fields = text.split("|")
    code = fields[3]
    fields[3] = ("B" if code[0] == "A" else "A") + code[1:]  # one character, still valid base32
    return "|".join(fields)


def _foreign(fleet: Fleet) -> str:
    return EnrollmentSigner.generate().issue("v1", datetime.now(UTC) + timedelta(minutes=15))


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_expired, "enroll_expired"),
        (_altered, "enroll_altered"),
        (_foreign, "enroll_foreign"),
    ],
    ids=["expired", "altered", "foreign"],
)
def test_a_bad_qr_is_refused_in_red_and_never_sent(
    server: Server, tmp_path: Path, make: Callable[[Fleet], str], code: str
) -> None:
    frames = _qr_folder(tmp_path / "frames", make(server.fleet))
    factory = MockFactory()
    config = load_enrollment_config(_bootstrap(server, tmp_path, frames))
    enrolled, lines = _enroll(config, factory)
    assert enrolled is None
    assert len(lines) == 1 and f"({code})" in lines[0], lines
    assert pin_history(factory) == expected_history(PATTERNS[Feedback.REFUSED])
    assert server.bodies == []
    assert not (tmp_path / "data" / "unit.json").exists()


def test_a_reused_qr_is_refused_by_the_server_for_the_second_unit(
    server: Server, tmp_path: Path
) -> None:
    frames = _qr_folder(tmp_path / "frames", issue_enrollment(server.fleet.home, "v1").text)
    first = load_enrollment_config(_bootstrap(server, tmp_path / "a", frames, unit_id="v1-first"))
    second = load_enrollment_config(_bootstrap(server, tmp_path / "b", frames, unit_id="v1-second"))
    enrolled, _ = _enroll(first)
    assert enrolled is not None
    factory = MockFactory()
    again, lines = _enroll(second, factory)
    assert again is None
    assert len(lines) == 1 and "(code_used)" in lines[0], lines
    assert pin_history(factory) == expected_history(PATTERNS[Feedback.REFUSED])
    assert len(server.bodies) == 2  # the second one did ask, and was told no
    assert not (tmp_path / "b" / "data" / "v1-second-key.pem").exists()
    with server.fleet.home.registry() as registry:
        assert registry.unit("v1-second") is None


# -- refusals at the server ------------------------------------------------------------


def _csr(unit_id: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _post(server: Server, body: bytes, path: str = "/v1/enroll") -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(server.fleet.ca))
    request = urllib.request.Request(server.url + path, data=body, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _ask(server: Server, token: str, unit_id: str) -> tuple[int, dict[str, Any]]:
    return _post(server, json.dumps({"token": token, "csr": _csr(unit_id)}).encode())


def test_the_server_refuses_what_it_must_and_keeps_serving(server: Server) -> None:
    fleet = server.fleet
    token = issue_enrollment(fleet.home, "v1").text
    nowhere = enrollment_signer(fleet.home).issue(
        "nowhere", datetime.now(UTC) + timedelta(minutes=5)
    )
    wrong_curve = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "v1-p384")])
    p384 = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(wrong_curve, hashes.SHA256())
    )
    p384_body = json.dumps(
        {"token": token, "csr": p384.public_bytes(serialization.Encoding.PEM).decode()}
    ).encode()
    cases: list[tuple[tuple[int, dict[str, Any]], int, str]] = [
        (_post(server, b"{not json"), 400, "bad_request"),
        (_post(server, b'{"token": "x"}'), 400, "bad_request"),
        (_post(server, b"x" * 20_000), 413, "too_large"),
        (_post(server, b"{}", path="/v1/other"), 404, "not_found"),
        (_ask(server, _expired(fleet), "v1-late"), 410, "enroll_expired"),
        (_ask(server, _altered(fleet), "v1-altered"), 403, "enroll_altered"),
        (_ask(server, _foreign(fleet), "v1-foreign"), 403, "enroll_foreign"),
        (_ask(server, "DSE1|garbage", "v1-garbage"), 400, "enroll_malformed"),
        (_ask(server, nowhere, "nowhere-1"), 404, "venue_unknown"),
        (_ask(server, token, "doorscan-hub"), 403, "unit_reserved"),
        (_ask(server, token, "doorscan-hub-3"), 403, "unit_reserved"),
        (_ask(server, token, "doorscan-provisioning"), 403, "unit_reserved"),
        (_ask(server, token, "Not An Id"), 400, "csr_name"),
        (_post(server, p384_body), 400, "csr_key"),
        (_post(server, json.dumps({"token": token, "csr": "nope"}).encode()), 400, "csr_malformed"),
    ]
    for (status, answer), want_status, want_code in cases:
        assert (status, answer.get("error")) == (want_status, want_code), answer
        assert set(answer) == {"error", "reason"} and "Traceback" not in answer["reason"]

    # None of those spent the code: the same QR still enrolls a unit, exactly once...
    status, answer = _ask(server, token, "v1-after-refusals")
    assert status == 200, answer
    assert answer["unit_id"] == "v1-after-refusals" and answer["venue_id"] == "v1"
    # ...and an id that is now taken is refused even with a fresh code.
    fresh = issue_enrollment(fleet.home, "v1").text
    assert _ask(server, fresh, "v1-after-refusals")[1]["error"] == "unit_exists"
    assert _ask(server, token, "v1-another")[1]["error"] == "code_used"


def test_the_server_clock_decides_expiry(fleet: Fleet) -> None:
    token = issue_enrollment(fleet.home, "v1", timedelta(minutes=2)).text
    later = datetime.now(UTC) + timedelta(minutes=3)
    srv, http = _start_server(fleet, clock=lambda: later)
    with http:
        assert _ask(srv, token, "v1-clock")[0] == 410
    srv, http = _start_server(fleet)  # the control: the same token, the real clock
    with http:
        assert _ask(srv, token, "v1-clock")[0] == 200


def test_two_units_racing_with_one_code_cannot_both_win(server: Server) -> None:
    token = issue_enrollment(server.fleet.home, "v1").text
    bodies = [json.dumps({"token": token, "csr": _csr(f"v1-racer-{i}")}).encode() for i in range(6)]
    barrier = threading.Barrier(len(bodies))
    results: list[int] = []

    def go(body: bytes) -> None:
        barrier.wait()
        results.append(_post(server, body)[0])

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] + [409] * (len(bodies) - 1)


def test_a_spent_code_stays_spent_and_a_failed_spend_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "enrollments.db"
    ledger = CodeLedger(path)
    now = datetime.now(UTC)
    with pytest.raises(RuntimeError), ledger.spend("d1", "v1", "u1", now):
        raise RuntimeError("issuing failed")
    assert ledger.spent_count() == 0  # the failure did not burn the code
    with ledger.spend("d1", "v1", "u1", now):
        pass
    reopened = CodeLedger(path)  # another process, or the server after a restart
    with pytest.raises(EnrollRefused) as refused, reopened.spend("d1", "v1", "u2", now):
        pytest.fail("a spent code was let through")
    assert (refused.value.status, refused.value.code) == (409, "code_used")
    assert reopened.spent_count() == 1
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_server_log_never_holds_the_code(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    issued = issue_enrollment(server.fleet.home, "v1")
    with caplog.at_level("INFO", logger="provisioning.enroll_server"):
        assert _ask(server, issued.text, "v1-logged")[0] == 200
        assert _ask(server, issued.text, "v1-logged-2")[0] == 409
    text = caplog.text
    assert code_digest(issued.token.code)[:12] in text  # the control: the lines are there
    assert issued.token.code not in text


# -- the technician's command ----------------------------------------------------------


def test_provisioning_enroll_prints_a_qr_the_unit_can_read(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qr.png"
    assert (
        provisioning(["--home", str(fleet.home.root), "enroll", "--venue", "v1", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "▀" in printed or "█" in printed  # the compact terminal QR
    assert "enrollment code for venue v1" in printed
    assert out.stat().st_mode & 0o777 == 0o600
    private, public = enroll_key_paths(fleet.home)
    assert public.read_bytes() == EnrollmentSigner.from_pem_file(private).public_pem()
    assert private.stat().st_mode & 0o777 == 0o600
    [symbol] = make_decoder("zxing").decode(load_grey(out))
    assert symbol.text is not None
    keyring = EnrollmentSigner.from_pem_file(private).keyring()
    token = parse_enrollment(symbol.text, keyring, datetime.now(UTC))
    assert token.venue_id == "v1"
    left = token.expires_at - datetime.now(UTC)
    assert timedelta(minutes=14) < left <= timedelta(minutes=15)
    assert len(token.code) == 26  # 128 bits in base32


@pytest.mark.parametrize(
    "args",
    [
        "enroll --venue nowhere",
        "enroll --venue v1 --ttl-minutes 0.5",
        "enroll --venue v1 --ttl-minutes 1441",
        "enroll --venue v1 --out qr.jpg",
    ],
)
def test_provisioning_enroll_refuses_with_one_line(
    fleet: Fleet, args: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert provisioning(["--home", str(fleet.home.root), *shlex.split(args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("provisioning: error: ") and err.count("\n") == 1


def test_provisioning_enroll_server_serves_until_stopped(fleet: Fleet, tmp_path: Path) -> None:
    port = free_port()
    d = fleet.broker_dir
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provisioning",
            "--home",
            str(fleet.home.root),
            "enroll-server",
            "--listen",
            f"{HOST}:{port}",
            "--server-cert",
            str(d / "broker-cert.pem"),
            "--server-key",
            str(d / "broker-key.pem"),
            # No --broker-port: units are told the TLS port `broker-files` recorded.
            "--broker-host",
            HOST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        srv = Server(fleet, f"https://{HOST}:{port}")

        def answered() -> bool:
            try:
                return _post(srv, b"{}")[0] == 400
            except OSError:
                return False

        assert wait_for(answered)
        token = issue_enrollment(fleet.home, "v1").text
        status, answer = _ask(srv, token, "v1-from-cli")
        assert status == 200, answer
        assert answer["config"]["broker_port"] == fleet.broker_port
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "enrollment server stopped" in out
    assert "enrolled unit v1-from-cli" in err  # the log line, without the code
    assert token.split("|")[3] not in out + err


def test_device_enroll_exits_non_zero_when_no_qr_is_accepted(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = _qr_folder(tmp_path / "frames", _foreign(server.fleet))
    bootstrap = _bootstrap(server, tmp_path, frames)
    done = subprocess.run(
        [sys.executable, "-m", "device", "enroll", "--config", str(bootstrap), "--max-frames", "5"],
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "(enroll_foreign)" in done.stdout
    assert "no enrollment QR was accepted" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # no key was made for a refused code

    typo = json.loads(bootstrap.read_text())
    typo["server_ur"] = typo.pop("server_url")
    bootstrap.write_text(json.dumps(typo))
    assert device_main(["enroll", "--config", str(bootstrap)]) == 2
    err = capsys.readouterr().err
    assert "server_ur" in err and err.count("\n") == 1


def test_the_new_unit_is_published_and_a_broker_failure_does_not_undo_it(fleet: Fleet) -> None:
    published: list[tuple[VenueRecord, UnitRecord]] = []

    def failing(venue: VenueRecord, unit: UnitRecord) -> None:
        raise PublishError("broker unreachable")

    def recording(venue: VenueRecord, unit: UnitRecord) -> None:
        published.append((venue, unit))

    for publish, unit_id in ((recording, "v2-pub-1"), (failing, "v2-pub-2")):
        service = EnrollmentService(fleet.home, HOST, fleet.broker_port, publish=publish)
        token = issue_enrollment(fleet.home, "v2").text
        body = json.dumps({"token": token, "csr": _csr(unit_id)}).encode()
        status, answer = service.handle(body)
        assert status == 200, answer
    [(venue, unit)] = published
    assert (venue.venue_id, unit.unit_id, unit.venue_id) == ("v2", "v2-pub-1", "v2")
    assert unit.active
    with fleet.home.registry() as registry:
        assert registry.unit("v2-pub-2") is not None


def test_enroll_bootstrap_writes_what_a_unit_image_carries(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "image"
    home = str(server.fleet.home.root)
    assert (
        provisioning(
            ["--home", home, "enroll-bootstrap", "--server-url", server.url, "--out", str(out)]
        )
        == 0
    )
    config = load_enrollment_config(out / "bootstrap.json")
    assert config.server_url == server.url
    # The service reads /etc/doorscan/unit.json: enrollment writes it there.
    assert config.config_file == Path("/etc/doorscan/unit.json")
    assert config.data_dir == Path("/var/lib/doorscan")
    assert config.ca_file.read_bytes() == server.fleet.ca.read_bytes()
    assert [p.read_bytes() for p in config.enroll_keys] == [
        enroll_key_paths(server.fleet.home)[1].read_bytes()
    ]
    # Public parts only: no private key of any kind goes into an image.
    assert all(b"PRIVATE" not in p.read_bytes() for p in out.iterdir())
    assert (
        provisioning(
            ["--home", home, "enroll-bootstrap", "--server-url", "http://x", "--out", str(out)]
        )
        == 1
    )
    assert "server_url" in capsys.readouterr().err
