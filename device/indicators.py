"""What the visitor sees and hears: a green LED, a red LED and a buzzer, via gpiozero.

Each `Feedback` has one pattern, written as data in `PATTERNS` (steps of green, red,
buzzer and a duration). What each means at the door:

====================  ==========================================  ======================
Feedback              the visitor sees / hears                    meaning
====================  ==========================================  ======================
ACCEPTED              green, one short beep                       recorded, walk in
ALREADY_IN            two short green blinks, silent              seen a moment ago, in
REFUSED               red, one long beep                          code not accepted
RECORDED_OFFLINE      green, two short beeps                      recorded, hub offline
FAULT                 red blinking three times, three beeps       NOT recorded: call staff
ENROLLED              green, red, green in turn, one short beep   this unit is enrolled
====================  ==========================================  ======================

ENROLLED is shown only by `device enroll`, never at a scan: it is the pattern the
technician waits for on the unit in front of them (green and red together in one
pattern appear nowhere else, so a visitor's code cannot look like it).

Every pattern lasts under a second and ends with everything off. `show()` returns
at once (the scan loop never waits for a beep); a player thread plays the steps,
and a newer feedback cuts the one playing short, because the door should answer
the person in front of it now.

Wiring (BCM numbers, see `device.config.PinsConfig`): each LED from its GPIO through
a 330 Ω resistor to ground; an *active* buzzer (it beeps on DC) from GPIO 22 to
ground, through a transistor if it draws more than ~15 mA. An active buzzer has its
own oscillator and one loudness, so gpiozero's on/off `Buzzer` drives it: the remote
config's `feedback_volume` 0 silences it and any other value sounds it (PWM on an
active buzzer chops its tone rather than making it quieter; a real volume needs a
passive buzzer on a `TonalBuzzer`, which these units do not have).

    >>> from gpiozero.pins.mock import MockFactory                 # doctest: +SKIP
    >>> with Indicators(pin_factory=MockFactory()) as leds:
    ...     leds.show(Feedback.ACCEPTED)
    ...     leds.wait_idle(2.0)
    True
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import LED, Buzzer

from doorscan.lifecycle import Closeable

__all__ = ["Feedback", "Step", "PATTERNS", "Indicators"]

log = logging.getLogger(__name__)


class Feedback(enum.Enum):
    """The answers a unit gives (the state counters use the lower-case names of the first
    five; ENROLLED is the enrollment mode's success and is not a scan outcome)."""

    ACCEPTED = "accepted"
    ALREADY_IN = "already_in"
    REFUSED = "refused"
    RECORDED_OFFLINE = "recorded_offline"
    FAULT = "fault"
    ENROLLED = "enrolled"


@dataclass(frozen=True)
class Step:
    """The three outputs held for `duration_s`."""

    green: bool
    red: bool
    buzzer: bool
    duration_s: float


_ON, _OFF = True, False

PATTERNS: dict[Feedback, tuple[Step, ...]] = {
    Feedback.ACCEPTED: (
        Step(green=_ON, red=_OFF, buzzer=_ON, duration_s=0.15),
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.55),
    ),
    Feedback.ALREADY_IN: (
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.15),
        Step(green=_OFF, red=_OFF, buzzer=_OFF, duration_s=0.15),
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.15),
    ),
    Feedback.REFUSED: (
        Step(green=_OFF, red=_ON, buzzer=_ON, duration_s=0.6),
        Step(green=_OFF, red=_ON, buzzer=_OFF, duration_s=0.3),
    ),
    Feedback.RECORDED_OFFLINE: (
        Step(green=_ON, red=_OFF, buzzer=_ON, duration_s=0.1),
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.1),
        Step(green=_ON, red=_OFF, buzzer=_ON, duration_s=0.1),
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.4),
    ),
    Feedback.FAULT: (
        Step(green=_OFF, red=_ON, buzzer=_ON, duration_s=0.1),
        Step(green=_OFF, red=_OFF, buzzer=_OFF, duration_s=0.1),
        Step(green=_OFF, red=_ON, buzzer=_ON, duration_s=0.1),
        Step(green=_OFF, red=_OFF, buzzer=_OFF, duration_s=0.1),
        Step(green=_OFF, red=_ON, buzzer=_ON, duration_s=0.1),
    ),
    Feedback.ENROLLED: (
        Step(green=_ON, red=_OFF, buzzer=_ON, duration_s=0.1),
        Step(green=_OFF, red=_ON, buzzer=_ON, duration_s=0.1),
        Step(green=_ON, red=_OFF, buzzer=_ON, duration_s=0.1),
        Step(green=_ON, red=_OFF, buzzer=_OFF, duration_s=0.5),
    ),
}


class Indicators(Closeable):
    """The door's LEDs and buzzer, driven by one player thread; close() when done.

    `pin_factory` goes to each gpiozero device (None: gpiozero's default, the real
    pins on a Pi), so tests pass a `MockFactory` without touching global state.
    `sound_allowed` is asked once at the start of each pattern (in the player thread):
    False plays the pattern with the buzzer silent and the LEDs as usual (remote config:
    volume 0, quiet hours). It may be replaced at any time.
    """

    def __init__(
        self,
        green_pin: int = 17,
        red_pin: int = 27,
        buzzer_pin: int = 22,
        *,
        pin_factory: Any = None,
        sound_allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.sound_allowed: Callable[[], bool] = sound_allowed or (lambda: True)
        devices: list[Any] = []
        try:
            devices.append(LED(green_pin, pin_factory=pin_factory))
            devices.append(LED(red_pin, pin_factory=pin_factory))
            devices.append(Buzzer(buzzer_pin, pin_factory=pin_factory))
        except BaseException:
            for device in devices:
                device.close()
            raise
        self._green, self._red, self._buzzer = devices
        self._cond = threading.Condition()
        self._pending: Feedback | None = None
        self._busy = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="indicators", daemon=True)
        self._thread.start()

    def show(self, feedback: Feedback) -> None:
        """Start playing `feedback` (cutting short whatever plays) and return at once.

        After `close()` this does nothing: a late scan must not fail on a dark door.
        """
        with self._cond:
            if self._closing:
                log.debug("indicators closed; %s not shown", feedback.name)
                return
            self._pending = feedback
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is playing or queued; False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closing or (self._pending is None and not self._busy), timeout_s
            )

    def close(self) -> None:
        """Stop playing, switch everything off, release the pins; idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(5.0)
        if self._thread.is_alive():
            log.error("the indicator thread did not stop; closing the pins anyway")
        self._all_off()
        for device in (self._buzzer, self._red, self._green):
            device.close()

    # -- the player thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._pending is not None)
                if self._closing:
                    return
                feedback, self._pending = self._pending, None
                self._busy = True
            assert feedback is not None
            try:
                self._play(PATTERNS[feedback], self._sound())
            except Exception:
                # A pin fault must not kill the player: the next feedback may still work.
                log.exception("playing %s failed", feedback.name)
            with self._cond:
                if self._pending is not None and not self._closing:
                    # Pre-empted: the next pattern's first step sets all three outputs,
                    # so no "off" flicker goes in between.
                    continue
            self._all_off()
            with self._cond:
                if self._pending is None:
                    self._busy = False
                    self._cond.notify_all()

    def _sound(self) -> bool:
        try:
            return bool(self.sound_allowed())
        except Exception:
            # The beep is part of the answer to the visitor: when in doubt, beep.
            log.exception("deciding whether the buzzer may sound failed; it sounds")
            return True

    def _play(self, steps: tuple[Step, ...], sound: bool = True) -> None:
        for step in steps:
            self._set(step.green, step.red, step.buzzer and sound)
            with self._cond:
                if self._cond.wait_for(
                    lambda: self._closing or self._pending is not None, step.duration_s
                ):
                    return

    def _set(self, green: bool, red: bool, buzzer: bool) -> None:
        # Pins are written without holding the condition so that show() never waits
        # on GPIO; only this thread (and close(), after joining it) writes them.
        self._green.value = green
        self._red.value = red
        self._buzzer.value = buzzer

    def _all_off(self) -> None:
        try:
            self._set(False, False, False)
        except Exception:
            log.exception("could not switch the indicators off")
