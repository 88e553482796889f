"""The technician's self-test: walk through every part of a unit, then a pass/fail table.

``python -m device selftest --config /etc/doorscan/unit.json`` (or holding the
button for 3 s at boot) checks, in order:

* leds:    green, then red, each lit alone for a moment (watch that each lights);
* buzzer:  one beep (listen);
* camera:  live decoding for `seconds`, printing each code's kind and whether the
           door would accept it, never the identity itself (a visitor may be watching);
* broker:  a connection with the unit's own TLS settings; nothing is published, and a
           separate client id is used so a running unit is not thrown off;
* clock:   trusted (NTP synchronised) or not;
* disk:    free space in the data folder.

The LED and buzzer checks can only prove the pins can be driven; whether the light
came on is for the technician's eyes, which is why each is lit alone and named as it
lights. Every check runs even after one fails, so one visit sees every fault.

    >>> results = run_selftest(load_config(Path("unit.json")), seconds=10)  # doctest: +SKIP
    >>> print(format_table(results))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from gpiozero import LED, Button, Buzzer

from device.clock import SystemClock, UnitClock
from device.config import UnitConfig
from device.decoders import make_decoder
from device.frames import FrameSource, open_frames
from device.mqtt_sync import configure_client_auth
from device.unit import disk_free_mb
from doorscan.cards import CardKeyring
from doorscan.errors import Refusal
from doorscan.mqtt import fresh_client_id, make_client
from doorscan.payloads import parse_qr

__all__ = [
    "BUTTON_HOLD_S",
    "MIN_DISK_FREE_MB",
    "Check",
    "button_held",
    "format_table",
    "run_selftest",
]

BUTTON_HOLD_S = 3.0
MIN_DISK_FREE_MB = 200  # a day of scans is a few MB; below this, logs and updates fail first


@dataclass(frozen=True)
class Check:
    """One line of the table."""

    name: str
    ok: bool
    detail: str


def button_held(pin: int, *, hold_s: float = BUTTON_HOLD_S, pin_factory: Any = None) -> bool:
    """True if the button (to ground, internal pull-up) is down now and stays down `hold_s`.

    Asked once at boot, before the unit opens its pins: a button merely brushed, or
    one that is up, starts the unit normally at once.
    """
    with Button(pin, pull_up=True, pin_factory=pin_factory) as button:
        if not button.is_pressed:
            return False
        released = button.wait_for_release(timeout=hold_s)
        return not released


def _outputs(
    config: UnitConfig, pin_factory: Any, step_s: float, say: Callable[[str], None]
) -> list[Check]:
    pins = config.pins
    checks: list[Check] = []
    for name, pin in (("green LED", pins.green_led), ("red LED", pins.red_led)):
        try:
            with LED(pin, pin_factory=pin_factory) as led:
                say(f"leds: {name} (GPIO {pin}) on now: is it lit?")
                led.on()
                time.sleep(step_s)
                led.off()
            checks.append(Check(f"{name}", True, f"GPIO {pin} driven; look that it lit"))
        except Exception as exc:  # gpiozero raises a family of its own per fault
            checks.append(Check(f"{name}", False, f"GPIO {pin}: {exc}"))
    try:
        with Buzzer(pins.buzzer, pin_factory=pin_factory) as buzzer:
            say(f"buzzer (GPIO {pins.buzzer}): one beep now")
            buzzer.on()
            time.sleep(step_s)
            buzzer.off()
        checks.append(Check("buzzer", True, f"GPIO {pins.buzzer} driven; listen for the beep"))
    except Exception as exc:
        checks.append(Check("buzzer", False, f"GPIO {pins.buzzer}: {exc}"))
    return checks


def _camera(
    config: UnitConfig,
    frames: FrameSource | None,
    seconds: float,
    say: Callable[[str], None],
) -> Check:
    try:
        card_keys = CardKeyring.from_pem_files(config.card_keys) if config.card_keys else None
        source = frames if frames is not None else open_frames(config.frames)
    except Exception as exc:
        return Check("camera", False, str(exc))
    decoder = make_decoder(config.decoder)
    read = codes = 0
    say(f"camera: show a code to the camera; decoding for {seconds:.0f} s")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            frame = source.read()
            if frame is None:
                if config.frames.source == "files":
                    break  # an image folder has run out
                time.sleep(0.05)
                continue
            read += 1
            for symbol in decoder.decode(frame):
                codes += 1
                say(f"camera: code {codes}: {_verdict(symbol.text, card_keys)}")
    except Exception as exc:
        return Check("camera", False, f"after {read} frames: {exc}")
    finally:
        source.close()
        close = getattr(decoder, "close", None)
        if callable(close):
            close()
    if read == 0:
        return Check("camera", False, "no frame arrived")
    return Check("camera", True, f"{read} frames, {codes} codes read")


def _verdict(text: str | None, card_keys: CardKeyring | None) -> str:
    # Kind and rule only: the decoded text is a person's identity.
    if text is None:
        return "refused (not UTF-8 text)"
    try:
        identity = parse_qr(text, card_keys=card_keys)
    except Refusal as refusal:
        return f"refused ({refusal.code})"
    return f"{identity.kind}, accepted"


def _broker(config: UnitConfig, timeout_s: float) -> Check:
    broker = config.broker
    where = f"{broker.host}:{broker.port}"
    connected = threading.Event()
    outcome: list[Any] = []  # the CONNACK's reason code

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.append(reason)
        connected.set()

    # Not the unit's id: that would end a running unit's session.
    client = make_client(fresh_client_id(f"{config.unit_id}-selftest"))
    client.on_connect = on_connect
    try:
        configure_client_auth(client, broker)
        client.connect(broker.host, broker.port, keepalive=10)
    except Exception as exc:  # refused, unresolvable, TLS handshake failure
        return Check("broker", False, f"{where}: {exc}")
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            return Check("broker", False, f"{where}: no answer in {timeout_s:.0f} s")
        if outcome[0].is_failure:
            return Check("broker", False, f"{where}: refused ({outcome[0]})")
        tls = "TLS" if broker.ca_file else "no TLS"
        return Check("broker", True, f"{where} ({tls})")
    finally:
        client.disconnect()
        client.loop_stop()


def _clock(clock: UnitClock) -> Check:
    if clock.trusted():
        return Check("clock", True, "synchronised")
    return Check("clock", False, "not synchronised: check the network and NTP (timedatectl)")


def _disk(data_dir: Path) -> Check:
    where = data_dir
    while not where.exists() and where != where.parent:
        where = where.parent  # before the first run the folder may not exist yet
    free = disk_free_mb(where)
    if free is None:
        return Check("disk", False, f"cannot read {where}")
    return Check("disk", free >= MIN_DISK_FREE_MB, f"{free} MB free in {where}")


def run_selftest(
    config: UnitConfig,
    *,
    seconds: float = 10.0,
    pin_factory: Any = None,
    frames: FrameSource | None = None,
    clock: UnitClock | None = None,
    step_s: float = 1.0,
    broker_timeout_s: float = 10.0,
    say: Callable[[str], None] = print,
) -> list[Check]:
    """Every check, in order; `say` is told what to look at as it happens."""
    checks = _outputs(config, pin_factory, step_s, say)
    checks.append(_camera(config, frames, seconds, say))
    say(f"broker: connecting to {config.broker.host}:{config.broker.port}")
    checks.append(_broker(config, broker_timeout_s))
    checks.append(_clock(clock or UnitClock(SystemClock())))
    checks.append(_disk(config.data_dir))
    return checks


def format_table(checks: list[Check]) -> str:
    """The pass/fail table, one check a line, then the verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL'}  {c.detail}" for c in checks]
    failed = sum(not c.ok for c in checks)
    lines.append(f"self-test: {'PASS' if not failed else f'FAIL ({failed} failed)'}")
    return "\n".join(lines)
