"""`make demo`: the whole path on real parts, in under a minute, cleaned up afterwards.

1. A private Mosquitto on a free loopback port (an embedded amqtt broker if Mosquitto is
   not installed).
2. `provisioning` creates keys, three venues and three units, and publishes the registry.
3. `hub serve` runs as its own process on a fresh SQLite store, with a new vault key
   (`hub init-vault`) that seals identities at rest.
4. Three door units run in this process with their real rooms (decoder, journal,
   debounce, indicators on gpiozero's mock pins, MQTT sync). Each is fed camera-like
   frames rendered from the codes of about 40 invented people who follow a day's
   schedule; every frame goes through a real decoder (two units use zxing-cpp, one zbar).
   A simulated clock moves the units through the day so the scans carry its times.
5. When every unit's journal is drained, the hub's counts, a venue's visitor list and an
   F1/F2 trace for the first case are printed, using the hub's own command line.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from device.clock import ManualClock
from device.config import UnitConfig, load_config
from device.indicators import Feedback
from device.unit import Unit
from doorscan.localbroker import LocalBroker, find_mosquitto, free_port
from doorscan.synthetic import (
    Person,
    blank_frame,
    cccd_text,
    health_text,
    make_people,
    render_frame,
)
from doorscan.timefmt import VIETNAM
from hub.launcher import HubProcess

__all__ = ["main"]

DAY = datetime(2022, 1, 10, tzinfo=VIETNAM)
VENUES = [
    ("bv-pleiku", "Bệnh viện Đa khoa tỉnh Gia Lai", "132 Tôn Thất Tùng", "Thành phố Pleiku"),
    ("cho-ia-kha", "Chợ Ia Kha", "Thị trấn Ia Kha", "Huyện Ia Grai"),
    ("ubnd-chu-pah", "UBND huyện Chư Păh", "Thị trấn Phú Hòa", "Huyện Chư Păh"),
]
DECODERS = ["zxing", "zxing", "zbar"]


@dataclass(frozen=True)
class Visit:
    person: int
    venue: int
    at: datetime
    text: str


def _schedule(people: list[Person], seed: int) -> list[Visit]:
    """A day: everyone visits one to three venues; person 0 is the case to trace.

    Person 0 is at the hospital at 08:00 with people 1-3 close behind (their F1); person 1
    then goes to the market at 10:00 and meets people 4-5 there (F2 through person 1).
    """
    rng = random.Random(seed)

    def at(hour: int, minute: int) -> datetime:
        return DAY.replace(hour=hour, minute=minute)

    plan = [(0, 0, at(8, 0)), (1, 0, at(8, 20)), (2, 0, at(8, 45)), (3, 0, at(7, 30))]
    plan += [(1, 1, at(10, 0)), (4, 1, at(10, 30)), (5, 1, at(9, 15))]
    for person in range(6, len(people)):
        for _ in range(rng.randint(1, 3)):
            plan.append((person, rng.randrange(3), at(rng.randint(11, 16), rng.randrange(60))))
    visits = []
    for person, venue, when in plan:
        who = people[person]
        # One in five shows the health QR; it carries the same ID number as their CCCD.
        text = health_text(who) if rng.random() < 0.2 else cccd_text(who)
        visits.append(Visit(person, venue, when, text))
    return sorted(visits, key=lambda v: v.at)


def _python(*args: str) -> str:
    """Run one of doorscan's command lines, as a technician would; return what it printed."""
    done = subprocess.run([sys.executable, *args], text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.rstrip()


def _say(text: str) -> None:
    print(text, flush=True)


def _start_broker(stack: ExitStack) -> tuple[str, int]:
    if find_mosquitto():
        broker = stack.enter_context(LocalBroker())
        _say(f"broker   : mosquitto on {broker.host}:{broker.port}")
        return broker.host, broker.port
    from doorscan.embedded_broker import EmbeddedBroker

    host, port = "127.0.0.1", free_port()
    stack.callback(EmbeddedBroker(host, port).start().close)
    _say(f"broker   : embedded amqtt on {host}:{port} (mosquitto not installed)")
    return host, port


def _provision(work: Path, host: str, port: int) -> list[UnitConfig]:
    """What a technician does: keys, venues, units, and the registry sent to the hub."""
    fleet = work / "fleet"
    prov = ("-m", "provisioning", "--home", str(fleet))
    broker = ("--broker-host", host, "--broker-port", str(port))
    _python(*prov, "init")
    configs = []
    for (venue_id, name, address, district), decoder in zip(VENUES, DECODERS, strict=True):
        _python(*prov, "add-venue", "--id", venue_id, "--name", name, "--address", address,
                "--district", district)  # fmt: skip
        unit_id = f"{venue_id}-door-1"
        # The invented day is in the past, so the units are registered as of the day
        # before it: the hub holds apart scans a unit claims before its registration.
        _python(*prov, "add-device", "--id", unit_id, "--venue", venue_id, *broker,
                "--decoder", decoder, "--data-dir", str(work / "units" / unit_id),
                "--registered-at", (DAY - timedelta(days=1)).isoformat())  # fmt: skip
        configs.append(load_config(fleet / "units" / f"{unit_id}.json"))
    _python(*prov, "publish", *broker)
    _say(f"provision: {len(VENUES)} venues, {len(configs)} units registered and published")
    return configs


def _walk_through_the_day(units: list[Unit], clocks: list[ManualClock], visits: list[Visit],
                          seed: int) -> Counter[str]:  # fmt: skip
    """Each visitor holds up a code at a door, then the door is empty again."""
    rng = random.Random(seed)
    feedback: Counter[str] = Counter()

    def show(unit: Unit, text: str) -> None:
        offset = (rng.randrange(0, 300), rng.randrange(0, 100))  # where the card is held
        feedback.update(
            o.feedback.value for o in unit.scanner.process(render_frame(text, offset=offset))
        )

    for visit in visits:
        unit, clock = units[visit.venue], clocks[visit.venue]
        clock.advance(max(0.0, (visit.at - clock.now()).total_seconds()))
        show(unit, visit.text)
        if rng.random() < 0.1:  # some show their code again a little later: "already in"
            clock.advance(20)
            unit.scanner.process(blank_frame())
            clock.advance(5)
            show(unit, visit.text)
        clock.advance(5)
        unit.scanner.process(blank_frame())
    show(units[1], "https://example.org/free-wifi")  # not an ID at all: red
    return feedback


def _report(db: Path, vault_key: Path, people: list[Person]) -> None:
    hub = ("-m", "hub")
    store = ("--db", str(db), "--vault-key", str(vault_key))
    period = ("--since", DAY.isoformat(), "--until", (DAY + timedelta(days=1)).isoformat())
    counts = json.loads(_python(*hub, "stats", *store))
    _say(
        f"\nThe hub holds {counts['scans']} check-ins of {counts['people']} people at "
        f"{counts['venues']} venues from {counts['units']} units; {counts['dead_letters']} "
        f"refused messages, {counts['held']} scans held apart. Times below are Vietnam time."
    )
    _say(f"\n== who was at {VENUES[0][1]} ==")
    _say(_python(*hub, "visitors", *store, "--venue", VENUES[0][0], *period,
                 "--reason", "DEMO-VENUE-LIST", "--format", "table"))  # fmt: skip
    index = people[0]
    _say(f"\n== trace of {index.name} ({index.id_number}), window 60 min, depth 2 ==")
    _say(_python(*hub, "trace", *store, "--id", index.id_number, *period,
                 "--window-minutes", "60", "--depth", "2", "--reason", "DEMO-CASE-001",
                 "--format", "table"))  # fmt: skip


def _next_steps(work: Path, db: Path, vault_key: Path, *, keep: bool) -> str:
    """How to look at the demo's data in the dashboard (the work folder is kept with --keep)."""
    if not keep:
        return "To look at this day in the dashboard, run the demo again with --keep."
    store = f"--db {db} --vault-key {vault_key}"
    return (
        f"Files kept in {work}. To open the dashboard on them:\n"
        f"  {sys.executable} -m hub user add {store} --id tracer --name Tracer --role tracer "
        "--password-stdin   # type a password of 12 or more characters\n"
        f"  {sys.executable} -m hub web {store} --http 127.0.0.1:8080\n"
        "  then open http://127.0.0.1:8080 and log in as tracer"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doorscan.demo", description=__doc__)
    parser.add_argument("--people", type=int, default=40, help="how many people (default 40)")
    parser.add_argument("--seed", type=int, default=2021, help="seed of the invented day")
    parser.add_argument("--keep", action="store_true", help="keep the work folder for a look")
    args = parser.parse_args(argv)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="doorscan-demo-"))
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        host, port = _start_broker(stack)
        configs = _provision(work, host, port)

        db = work / "hub.db"
        # The hub keeps identities sealed at rest under its vault key; a real
        # hub's key is backed up apart from the database, the demo's dies with the folder.
        vault_key = work / "hub-vault.key"
        _python("-m", "hub", "init-vault", str(vault_key))
        # The units seal every scan; only the hub's private key opens them.
        hub = HubProcess(db, host, port, work / "hub.log", vault_key=vault_key,
                         card_keys=configs[0].card_keys,
                         seal_key=work / "fleet" / "keys" / "hub-seal.key")  # fmt: skip
        stack.callback(hub.stop)
        _say(f"hub      : {hub.ready_line()}")

        people = make_people(args.people, seed=args.seed)
        visits = _schedule(people, args.seed)
        clocks = [ManualClock(DAY.replace(hour=6).astimezone(UTC)) for _ in configs]
        units = [
            stack.enter_context(Unit(config, clock=clock, pin_factory=MockFactory()))
            for config, clock in zip(configs, clocks, strict=True)
        ]
        for unit in units:
            unit.sync.wait_connected(10)
        feedback = _walk_through_the_day(units, clocks, visits, args.seed)
        shown = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(feedback.items()))
        _say(f"units    : {len(visits)} visits shown to cameras; the doors answered: {shown}")

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(u.journal.backlog() for u in units):
            time.sleep(0.1)
        backlog = {u.config.unit_id: u.journal.backlog() for u in units}
        waiting = sum(backlog.values())
        _say(
            "sync     : every scan reached the hub and was acked"
            if not waiting
            else f"sync     : {waiting} scans still waiting on the units: {backlog}"
        )

        _report(db, vault_key, people)
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s")
        _say(_next_steps(work, db, vault_key, keep=args.keep))
        return 1 if any(backlog.values()) or feedback[Feedback.FAULT.value] else 0


if __name__ == "__main__":
    sys.exit(main())
