"""`serve --workers 2` over TLS, each worker with a certificate of its own.

The broker is the real Mosquitto of tests/test_broker_security.py's `fleet` fixture,
started with the mosquitto.conf and ACL `provisioning broker-files --hub-workers 2`
wrote; it makes each certificate's CN the client's user name and client id. The hub
is the real supervisor and workers (`hub.launcher.HubProcess`), the units are
production `MqttSync`s with the certificates `add-device --tls` issued. Which worker
stored what is read from the workers' "counters"/"stopped" lines; who connected as
whom is read from the broker's own log.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.config import SyncConfig, load_config
from device.journal import ScanJournal
from device.mqtt_sync import MqttSync
from doorscan.synthetic import cccd_text
from doorscan.wire import Scan
from hub.cli import main as hub_main
from hub.launcher import HubProcess
from provisioning.broker_pki import BrokerPKI
from provisioning.cli import main as provisioning_main
from provisioning.fleet import InvalidInput
from tests.fault_net_support import PEOPLE, now, registered_store
from tests.hubstore import open_store, vault_key_file
from tests.test_broker_security import HOST, Fleet
from tests.test_broker_security import fleet as fleet
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

UNITS = {"unit-a": "v1", "unit-b": "v1"}  # registered and issued by the fleet fixture
SCANS_PER_UNIT = 40
_FINAL = re.compile(r"^hub worker (\d+) stopped: (\{.*\})$", re.MULTILINE)
_COUNTERS = re.compile(r"^hub worker (\d+) (?:counters|stopped): (\{.*\})$", re.MULTILINE)


def _worker_tls(fleet: Fleet, cert: str, key: str) -> list[str]:
    d = fleet.broker_dir
    return [
        "--ca-file",
        str(d / "ca.pem"),
        "--cert-file",
        str(d / cert),
        "--key-file",
        str(d / key),
    ]


def _stored(output: str, pattern: re.Pattern[str]) -> dict[int, int]:
    """Each worker's last reported scans_stored."""
    return {int(i): json.loads(c)["scans_stored"] for i, c in pattern.findall(output)}


def _broker_log(fleet: Fleet) -> Path:
    return fleet.home.parent / "mosquitto.log"  # where the fixture sends Mosquitto's output


def test_two_workers_with_their_own_certificates_store_every_scan_once(
    fleet: Fleet, hub_db: str, tmp_path: Path
) -> None:
    log_from = _broker_log(fleet).stat().st_size
    # Fresh ids per run: the fixture's broker outlives one backend's run of this test.
    run = uuid.uuid4().hex[:8]
    expected = {f"{unit}-{run}-{i:04d}" for unit in UNITS for i in range(SCANS_PER_UNIT)}
    with registered_store(hub_db, UNITS):
        pass  # the workers open the store themselves
    tls = _worker_tls(fleet, "hub-{n}-cert.pem", "hub-{n}-key.pem")
    hub = HubProcess(
        hub_db,
        HOST,
        fleet.port,
        tmp_path / "hub.log",
        vault_key=vault_key_file(),
        workers=2,
        extra_args=[*tls, "--report-every-s", "0.2"],
    )
    try:
        with ExitStack() as stack:
            journals: list[ScanJournal] = []
            t0 = now() - timedelta(hours=1)
            for unit, venue in UNITS.items():
                journal = stack.enter_context(ScanJournal(tmp_path / f"{unit}.db"))
                journals.append(journal)
                broker = load_config(fleet.units_dir / f"{unit}.json").broker
                assert broker.cert_file == fleet.units_dir / f"{unit}-cert.pem"
                sync = MqttSync(
                    unit,
                    journal,
                    broker,
                    SyncConfig(batch_size=5, ack_timeout_s=3.0, reconnect_min_s=1),
                )
                stack.enter_context(sync)
                for i in range(SCANS_PER_UNIT):
                    at = t0 + timedelta(seconds=i)
                    text = cccd_text(PEOPLE[i % len(PEOPLE)])
                    scan_id = f"{unit}-{run}-{i:04d}"
                    journal.record(
                        Scan(scan_id=scan_id, venue_id=venue, scanned_at=at, qr_text=text)
                    )
                sync.notify()
            # Drained means acked: each batch was stored and acked by a worker over TLS.
            assert wait_for(lambda: all(j.backlog() == 0 for j in journals), 60), hub.output()
            assert wait_for(lambda: len(_stored(hub.output(), _COUNTERS)) == 2, 20), hub.output()
    finally:
        code = hub.stop()
    output = hub.output()
    assert code == 0, output
    assert "Traceback" not in output and "no broker yet" not in output, output
    assert "hub worker 1 ready" in output and "hub worker 2 ready" in output
    # Round robin over the share group: both workers stored a share.
    final = _stored(output, _FINAL)
    assert set(final) == {1, 2} and all(n > 0 for n in final.values()), output

    with open_store(hub_db) as store:
        rows = [c.scan_id for c in store.checkins_at("v1", 0, 2**62)]
    mine = [scan_id for scan_id in rows if run in scan_id]
    assert sorted(mine) == sorted(expected)  # each scan once: no loss, no copy

    # The broker saw two clients, each under its certificate's CN, and neither threw
    # the other off (what one shared certificate would do).
    with _broker_log(fleet).open("rb") as f:
        f.seek(log_from)
        broker_log = f.read().decode("utf-8", errors="replace")
    for n in (1, 2):
        assert f" as doorscan-hub-{n} " in broker_log and f"u'doorscan-hub-{n}'" in broker_log
    assert not re.search(r"Client doorscan-hub\S* already connected", broker_log), broker_log


@pytest.mark.parametrize(
    ("workers", "cert", "key", "refusal"),
    [
        # One certificate for all: the workers would share one CN, so one client id.
        (2, "hub-cert.pem", "hub-key.pem", "each worker needs its own certificate"),
        (2, "hub-{n}-cert.pem", "hub-key.pem", "--key-file"),
        # broker-files issued two; a third worker would only crash-loop.
        (3, "hub-{n}-cert.pem", "hub-{n}-key.pem", "hub-3-cert.pem"),
    ],
)
def test_serve_workers_refuses_tls_files_the_workers_cannot_use(
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workers: int,
    cert: str,
    key: str,
    refusal: str,
) -> None:
    db = tmp_path / "hub.db"
    args = ["serve", "--db", str(db), "--workers", str(workers), "--broker-host", HOST]
    args += ["--broker-port", str(fleet.port), *_worker_tls(fleet, cert, key)]
    assert hub_main(args) == 2
    err = capsys.readouterr().err
    assert refusal in err and "Traceback" not in err, err
    assert not db.exists()  # refused before anything was opened


@pytest.mark.parametrize("unit_id", ["doorscan-hub-1", "doorscan-hub-64", "doorscan-hub-99"])
def test_no_unit_can_take_a_hub_workers_name(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], unit_id: str
) -> None:
    out = tmp_path / "units"
    command = f"add-device --id {unit_id} --venue v1 --tls --out {out}"
    assert provisioning_main(["--home", str(fleet.home), *shlex.split(command)]) == 1
    err = capsys.readouterr().err
    assert f"{unit_id!r} is reserved" in err and "hub and its workers" in err, err
    # Refused before anything was written: no config, no certificate, no registry entry.
    assert not out.exists()
    assert unit_id not in (fleet.home / "registry.json").read_text(encoding="utf-8")
    # Nor can the CA be made to issue one directly, for a key of its own or the unit's.
    pki = BrokerPKI(fleet.home / "keys")
    with pytest.raises(InvalidInput, match="is reserved"):
        pki.issue_client(unit_id)
    unit_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidInput, match="is reserved"):
        pki.issue_unit_for_key(unit_id, unit_key.public_key())


def test_broker_files_issues_one_certificate_per_hub_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, out = tmp_path / "fleet", tmp_path / "broker"
    assert provisioning_main(["--home", str(home), "init"]) == 0
    command = f"broker-files --out {out} --port 8883 --hub-workers 3"
    assert provisioning_main(["--home", str(home), *shlex.split(command)]) == 0
    printed = capsys.readouterr().out
    assert "hub-1-cert.pem hub-1-key.pem .. hub-3-cert.pem hub-3-key.pem" in printed
    for n in (1, 2, 3):
        cert = x509.load_pem_x509_certificate((out / f"hub-{n}-cert.pem").read_bytes())
        [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert cn.value == f"doorscan-hub-{n}"
        assert (out / f"hub-{n}-key.pem").stat().st_mode & 0o777 == 0o600
    assert not (out / "hub-4-cert.pem").exists()

    acl = (out / "acl").read_text(encoding="utf-8")
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in acl.split("\n\n") if block}
    users = [name for name in blocks if name.startswith("user ")]
    hubs = ["user doorscan-hub", *(f"user doorscan-hub-{n}" for n in (1, 2, 3))]
    assert users == [*hubs, "user doorscan-hub-config", "user doorscan-provisioning"]
    # Exactly the hub's rights for each worker, and no more than the hub's.
    assert all(blocks[user] == blocks["user doorscan-hub"] for user in hubs)
    assert sorted(line.split(maxsplit=1)[1] for line in blocks["user doorscan-hub"]) == [
        "read doorscan/v1/registry/#",
        "read doorscan/v1/units/+/status",
        "readwrite doorscan/v1/hub/status",
        "readwrite doorscan/v1/units/+/scans",
        "write doorscan/v1/units/+/ack",
        "write doorscan/v1/units/+/config",
    ]

    bad = f"broker-files --out {out} --port 8883 --hub-workers 65"
    with pytest.raises(SystemExit) as exit_:
        provisioning_main(["--home", str(home), *shlex.split(bad)])
    assert exit_.value.code == 2
    assert "from 0 to 64" in capsys.readouterr().err
