"""The door unit's command line: ``python -m device COMMAND`` (or ``doorscan-device``).

Commands:

* ``decode [--decoder zxing|zbar] [--card-key PEM]... [--config UNIT_JSON] FILE...``:
  read the QR codes in image files and judge them as a door would (with that unit's
  card keys, given ``--config``). One JSON line per file::

      {"file": "a.png", "codes": [{"text": "...", "kind": "cccd", "valid": true, "error": null}]}

  `text` is the exact decoded text (null when the code is not UTF-8); `kind` is the
  identity kind when the code is accepted; `error` is why it was refused. A file that
  cannot be read gives ``{"file": ..., "codes": [], "error": "..."}``, the other files
  are still read, and the exit status is 1.

* ``run --config FILE [--max-frames N] [--frames PATH] [--until-sent S]``: run a door
  unit until SIGTERM/SIGINT (or until an image folder runs out). ``--frames`` is the
  bench check: read images instead of the camera; ``--until-sent`` then waits for the
  hub's ack of every scan (exit 1 if some are still waiting after S seconds). The pins
  come from gpiozero's usual choice, so ``GPIOZERO_PIN_FACTORY=mock`` runs a unit on a
  machine without GPIO. Under systemd
  (``Type=notify``) it says READY=1 once scanning and pets the watchdog from the frame
  loop (`device.sdnotify`). With ``pins.button`` set, a button held for 3 s at boot runs
  the self-test first.

* ``selftest --config FILE [--seconds 10]``: the technician's walk through LEDs,
  buzzer, camera, broker, clock and disk (`device.selftest`); a pass/fail table,
  exit 1 if anything failed.

* ``enroll --config BOOTSTRAP [--max-frames N]``: enrollment mode (`device.enroll`):
  wait for the technician's one-time QR, make this unit's key, get its certificate
  and write ``unit.json`` for ``run``. Exit 0 once enrolled, 1 if no QR was accepted.

* ``quarantine --config FILE [--release [CODE]]``: the scans the hub refused for good,
  kept on the unit (`device.journal.ScanJournal.quarantine`): one JSON line each (id,
  time, the hub's code and reason; never the code's text). ``--release`` puts them (or
  those of one refusal code) back in the queue, to be sent at the next connection, e.g.
  once the hub has the key it lacked. Run it while the unit's service is stopped or
  running: the journal takes one writer at a time.

* ``import-bundle [--boot /boot/firmware] [--into /etc/doorscan]``: take in the offline
  config bundle written by ``provisioning bundle`` (`device.bundle`), its config as
  ``INTO/unit.json`` (the file the service runs), then delete it from the boot
  partition. Exit 0 when imported or when there is none, 1 when refused.

Each command is one function taking the parsed arguments and returning the exit
status; `build_parser` registers it with ``set_defaults(handler=...)``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.config import UnitConfig, load_config
from device.decoders import DecodedSymbol, DecoderError, make_decoder
from device.frames import FrameSourceError, load_grey
from device.sdnotify import SystemdNotifier
from device.selftest import button_held, format_table, run_selftest
from device.unit import Unit
from device.update_agent import EXIT_RESTART, POST_UPDATE_CHECKS, UpdateAgent
from doorscan.cards import CardKeyring
from doorscan.errors import ConfigError, DoorscanError, Refusal
from doorscan.payloads import parse_qr

__all__ = [
    "build_parser",
    "cmd_decode",
    "cmd_run",
    "cmd_enroll",
    "cmd_quarantine",
    "cmd_selftest",
    "main",
]

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_FAILED = 1  # some input could not be handled; the rest was
EXIT_USAGE = 2  # argparse's status for bad arguments; also a card key that will not load


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    # Named as it was started: `python -m device` or the `doorscan-device` script.
    prog = "python -m device" if Path(sys.argv[0]).name == "__main__.py" else None
    parser = argparse.ArgumentParser(prog=prog, description="The doorscan door unit's commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    decode = commands.add_parser(
        "decode",
        help="read the QR codes in image files and judge them as the door would",
        description="Print one JSON line per file with every QR code found and its verdict.",
    )
    decode.add_argument(
        "--decoder",
        choices=("zxing", "zbar"),
        default="zxing",
        help="QR decoder library (default: zxing)",
    )
    decode.add_argument(
        "--card-key",
        dest="card_keys",
        metavar="PEM",
        type=Path,
        action="append",
        default=[],
        help="visitor-card public key to trust; repeat for several (default: cards are refused)",
    )
    decode.add_argument(
        "--config",
        type=Path,
        metavar="UNIT_JSON",
        help="judge with this unit's card keys, as that door would",
    )
    decode.add_argument("files", metavar="FILE", type=Path, nargs="+", help="image file")
    decode.set_defaults(handler=cmd_decode)

    run = commands.add_parser(
        "run",
        help="run a door unit from its config file",
        description="Scan, give feedback, journal and send, until stopped.",
    )
    run.add_argument("--config", type=Path, required=True, help="the unit's JSON config file")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    run.add_argument(
        "--frames",
        type=Path,
        metavar="PATH",
        help="a bench check: read this image file or folder instead of the camera, once",
    )
    run.add_argument(
        "--until-sent",
        type=float,
        metavar="S",
        help="after the frames, wait up to S seconds for the hub to ack every scan; exit 1 "
        "if some are still waiting",
    )
    run.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    run.set_defaults(handler=cmd_run)

    enroll = commands.add_parser(
        "enroll",
        help="enrollment mode: wait for the technician's QR, get this unit's certificate",
        description="Scan for a one-time enrollment QR, make a key here, and enroll.",
    )
    enroll.add_argument(
        "--config", type=Path, required=True, help="the bootstrap JSON (see device.enroll)"
    )
    enroll.add_argument("--max-frames", type=int, default=None, help="give up after N frames")
    enroll.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    enroll.set_defaults(handler=cmd_enroll)

    selftest = commands.add_parser(
        "selftest",
        help="walk through LEDs, buzzer, camera, broker, clock and disk; a pass/fail table",
        description="The technician's self-test; exit 1 if any check failed.",
    )
    selftest.add_argument("--config", type=Path, required=True, help="the unit's JSON config")
    selftest.add_argument(
        "--seconds", type=float, default=10.0, help="live camera decoding time (default 10)"
    )
    selftest.set_defaults(handler=cmd_selftest)

    quarantine = commands.add_parser(
        "quarantine",
        help="list the scans the hub refused for good, or put them back in the queue",
        description="Scans the hub refused for good are kept here, never sent again, until "
        "released.",
    )
    quarantine.add_argument("--config", type=Path, required=True, help="the unit's JSON config")
    quarantine.add_argument(
        "--release",
        nargs="?",
        const="",
        metavar="CODE",
        help="put the quarantined scans (only those of refusal CODE, if given) back in the queue",
    )
    quarantine.set_defaults(handler=cmd_quarantine)

    take = commands.add_parser(
        "import-bundle",
        help="take in the offline config bundle from the boot partition (at boot)",
        description="Install doorscan-bundle/ from the boot partition, then delete it there.",
    )
    take.add_argument("--boot", type=Path, default=Path("/boot/firmware"), help="boot partition")
    take.add_argument(
        "--into", type=Path, default=Path("/etc/doorscan"), help="the unit's config folder"
    )
    take.set_defaults(handler=cmd_import_bundle)
    return parser


def _verdict(symbol: DecodedSymbol, card_keys: CardKeyring | None) -> dict[str, Any]:
    if symbol.text is None:
        return {"text": None, "kind": None, "valid": False, "error": symbol.error}
    try:
        identity = parse_qr(symbol.text, card_keys=card_keys)
    except Refusal as refusal:
        reason = refusal.reason
        if refusal.code == "card_no_key" and card_keys is None:
            # Not a verdict on the card: nothing to check its signature with was given.
            reason = (
                "a doorscan visitor card, its signature not checked: give --card-key "
                "(the fleet's keys/card-signing.pub.pem) or --config UNIT_JSON"
            )
        return {"text": symbol.text, "kind": None, "valid": False, "error": reason}
    return {"text": symbol.text, "kind": identity.kind, "valid": True, "error": None}


def _print_json(line: dict[str, Any]) -> None:
    print(json.dumps(line, ensure_ascii=False), flush=True)


def cmd_decode(args: argparse.Namespace) -> int:
    """``decode``: one JSON line per file; 1 if any file could not be read."""
    paths = list(args.card_keys or [])
    try:
        if args.config is not None:
            paths += load_config(args.config).card_keys
        card_keys = CardKeyring.from_pem_files(paths) if paths else None
    except ConfigError as exc:
        print(f"decode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"decode: cannot load a card key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    decoder = make_decoder(args.decoder)
    try:
        for path in args.files:
            try:
                symbols = decoder.decode(load_grey(path))
            except (FrameSourceError, DecoderError) as exc:
                _print_json({"file": str(path), "codes": [], "error": str(exc)})
                status = EXIT_FAILED
                continue
            codes = [_verdict(symbol, card_keys) for symbol in symbols]
            _print_json({"file": str(path), "codes": codes})
    finally:
        close = getattr(decoder, "close", None)
        if callable(close):
            close()
    return status


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: a unit until SIGTERM/SIGINT; the backlog stays in the journal for next time."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.frames is not None:
        bench = config.frames.model_copy(update={"source": "files", "path": args.frames})
        config = config.model_copy(update={"frames": bench})
    waiting = 0
    notifier = SystemdNotifier.from_environment()
    try:
        agent = UpdateAgent.for_config(config)
    except ConfigError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if config.pins.button is not None and button_held(config.pins.button):
            print("button held at boot: self-test first", flush=True)
            notifier.status("self-test (button held at boot)")
            checks = run_selftest(config, say=_report)
            print(format_table(checks), flush=True)
        if (
            agent is not None
            and agent.awaiting_confirmation()
            and not _new_release_passes(agent, config, notifier)
        ):
            return EXIT_RESTART
        with Unit(config, notifier=notifier, update_agent=agent) as unit:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: unit.stop())
            print(f"unit {config.unit_id} at {config.venue_id}: running", flush=True)
            notifier.ready("scanning")
            frames = unit.run(max_frames=args.max_frames)
            if args.until_sent is not None:
                waiting = _wait_sent(unit, args.until_sent)
            notifier.stopping()
            unit.indicators.wait_idle(2.0)
    finally:
        notifier.close()
    print(f"unit {config.unit_id}: stopped after {frames} frames", flush=True)
    if agent is not None and agent.restart_wanted:
        print(f"unit {config.unit_id}: restarting into release {agent.slots.current()}", flush=True)
        return EXIT_RESTART
    return EXIT_FAILED if waiting else EXIT_OK


def _new_release_passes(agent: UpdateAgent, config: UnitConfig, notifier: SystemdNotifier) -> bool:
    """The self-test a release just switched to runs before it scans; rolled back if failed."""
    notifier.status(f"release {agent.running}: self-test before scanning")
    checks = run_selftest(config, seconds=3.0, step_s=0.2, say=_report)
    if {c.name for c in checks} != {*POST_UPDATE_CHECKS, "clock"}:
        # A renamed check would otherwise drop out of the decision without a word.
        raise RuntimeError(f"the self-test's checks changed: {[c.name for c in checks]}")
    checks = [c for c in checks if c.name in POST_UPDATE_CHECKS]
    print(format_table(checks), flush=True)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    if failed:
        agent.roll_back("self-test failed: " + "; ".join(failed))
    return not failed


def _wait_sent(unit: Unit, timeout_s: float) -> int:
    """Wait until the journal holds nothing unacked, or `timeout_s`; say which, return
    how many scans still wait (they stay in the journal for the next run)."""
    deadline = time.monotonic() + timeout_s
    while unit.journal.backlog() and time.monotonic() < deadline:
        time.sleep(0.2)
    waiting = unit.journal.backlog()
    if waiting:
        print(f"unit {unit.config.unit_id}: {waiting} scans not yet acked by the hub", flush=True)
    else:
        print(f"unit {unit.config.unit_id}: every scan acked by the hub", flush=True)
    return waiting


def cmd_selftest(args: argparse.Namespace) -> int:
    """``selftest``: the pass/fail table; 0 when every check passed, 1 otherwise."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"selftest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    checks = run_selftest(config, seconds=args.seconds, say=_report)
    print(format_table(checks), flush=True)
    return EXIT_OK if all(check.ok for check in checks) else EXIT_FAILED


def cmd_enroll(args: argparse.Namespace) -> int:
    """``enroll``: 0 once enrolled; 1 when the frames or the deadline ran out first."""
    # Imported here: `run`, started again after every crash or watchdog restart, does not
    # need the enrollment client (x509, HTTPS) and should not wait for it.
    from device.enroll import enroll_unit, load_enrollment_config

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_enrollment_config(args.config)
        print(f"enrollment mode: show the enrollment QR to the camera ({config.server_url})")
        enrolled = enroll_unit(config, max_frames=args.max_frames, report=_report)
    except ConfigError as exc:
        print(f"enroll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DoorscanError, OSError, ValueError) as exc:  # a key file, the camera, the disk
        print(f"enroll: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if enrolled is None:
        print("enroll: no enrollment QR was accepted; nothing was written", file=sys.stderr)
        return EXIT_FAILED
    print(f"unit config  {enrolled.config_path}", flush=True)
    print(f"unit key     {enrolled.key_path} (mode 0600, made here, never sent)", flush=True)
    print(f"run it with: python -m device run --config {enrolled.config_path}", flush=True)
    return EXIT_OK


def cmd_import_bundle(args: argparse.Namespace) -> int:
    """``import-bundle``: 0 when imported or when there is none; 1 when refused."""
    from device.bundle import import_bundle  # only this command needs it

    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    try:
        imported = import_bundle(args.boot, args.into)
    except (ConfigError, OSError) as exc:
        print(f"import-bundle: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if imported is None:
        print(f"no bundle in {args.boot}: nothing to do")
        return EXIT_OK
    print(f"imported the config of {imported.unit_id}: {imported.config_path}")
    if not imported.bundle_removed:
        print("the bundle could not be deleted from the boot partition: delete it by hand")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    """``quarantine``: list, or ``--release``, the scans the hub refused for good."""
    from device.journal import JournalError, ScanJournal
    from doorscan.timefmt import format_rfc3339

    try:
        config = load_config(args.config)
        with ScanJournal(config.data_dir / "journal.db") as journal:
            if args.release is not None:
                released = journal.release_quarantined(args.release or None)
                print(f"released {released} scans: the unit sends them at its next connection")
                return EXIT_OK
            for kept in journal.quarantined(limit=10_000):
                _print_json(
                    {
                        "scan_id": kept.scan_id,
                        "scanned_at": format_rfc3339(kept.scanned_at),
                        "code": kept.code,
                        "reason": kept.reason,
                        "refused_at": format_rfc3339(kept.refused_at),
                    }
                )
    except ConfigError as exc:
        print(f"quarantine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JournalError as exc:
        print(f"quarantine: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _report(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    # The lines carry Vietnamese text unescaped: write UTF-8 whatever the locale says.
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.encoding.lower() != "utf-8":
        sys.stdout.reconfigure(encoding="utf-8")
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
