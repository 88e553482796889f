"""The door's LEDs and buzzer on gpiozero's own MockFactory: exact pin histories per pattern."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero import LED
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPin

from device.indicators import PATTERNS, Feedback, Indicators, Step

GREEN, RED, BUZZER = 17, 27, 22
PINS = {"green": GREEN, "red": RED, "buzzer": BUZZER}
IDLE_TIMEOUT_S = 10.0  # a bound for a stuck player, not a duration under test

History = dict[str, list[bool]]


def expected_history(steps: tuple[Step, ...] | list[Step]) -> History:
    """What each MockPin records for these steps: changes only, from off, ending off."""
    expected: History = {}
    for name in PINS:
        states = [False]
        for value in [getattr(step, name) for step in steps] + [False]:
            if value != states[-1]:
                states.append(value)
        expected[name] = states
    return expected


def pin_history(factory: MockFactory) -> History:
    return {name: [entry.state for entry in factory.pin(pin).states] for name, pin in PINS.items()}


def play(feedback: Feedback) -> History:
    factory = MockFactory()
    with Indicators(GREEN, RED, BUZZER, pin_factory=factory) as leds:
        leds.show(feedback)
        assert leds.wait_idle(IDLE_TIMEOUT_S)
        return pin_history(factory)


@pytest.fixture(scope="module")
def played() -> dict[Feedback, History]:
    """Each pattern played once for the whole module (they take most of a second each)."""
    return {feedback: play(feedback) for feedback in Feedback}


@pytest.mark.parametrize("feedback", list(Feedback), ids=lambda f: f.name)
def test_each_pattern_drives_the_pins_exactly_as_its_table_says(
    played: dict[Feedback, History], feedback: Feedback
) -> None:
    # Whole lists, lengths included: gpiozero's assert_states() zips and would miss extras.
    assert played[feedback] == expected_history(PATTERNS[feedback])


def test_the_patterns_look_different_at_the_door(played: dict[Feedback, History]) -> None:
    assert set(played) == set(Feedback) == set(PATTERNS)
    for a, b in itertools.combinations(Feedback, 2):
        assert played[a] != played[b], f"{a.name} and {b.name} look the same"


def flashes(history: History) -> dict[str, int]:
    return {name: states.count(True) for name, states in history.items()}


def test_the_patterns_mean_what_the_docstring_says(played: dict[Feedback, History]) -> None:
    assert flashes(played[Feedback.ACCEPTED]) == {"green": 1, "red": 0, "buzzer": 1}
    assert flashes(played[Feedback.ALREADY_IN]) == {"green": 2, "red": 0, "buzzer": 0}
    assert flashes(played[Feedback.REFUSED]) == {"green": 0, "red": 1, "buzzer": 1}
    assert flashes(played[Feedback.RECORDED_OFFLINE]) == {"green": 1, "red": 0, "buzzer": 2}
    assert flashes(played[Feedback.FAULT]) == {"green": 0, "red": 3, "buzzer": 3}
    # Green, red, green: the only pattern with both colours, so no scan looks like it.
    assert played[Feedback.ENROLLED] == {
        "green": [False, True, False, True, False],
        "red": [False, True, False],
        "buzzer": [False, True, False],
    }
    both = [f for f, h in played.items() if True in h["green"] and True in h["red"]]
    assert both == [Feedback.ENROLLED]

    def longest_beep_s(feedback: Feedback) -> float:
        beep = longest = 0.0
        for step in PATTERNS[feedback]:
            beep = beep + step.duration_s if step.buzzer else 0.0
            longest = max(longest, beep)
        return longest

    assert longest_beep_s(Feedback.REFUSED) >= 3 * longest_beep_s(Feedback.ACCEPTED)


def test_every_pattern_is_short() -> None:
    for feedback, steps in PATTERNS.items():
        assert steps, feedback
        assert all(step.duration_s > 0 for step in steps), feedback
        assert sum(step.duration_s for step in steps) <= 1.0, feedback


def test_show_returns_before_the_pattern_has_played() -> None:
    factory = MockFactory()
    with Indicators(GREEN, RED, BUZZER, pin_factory=factory) as leds:
        assert leds.wait_idle(0)
        leds.show(Feedback.REFUSED)
        assert not leds.wait_idle(0)  # queued or playing, not done
        assert leds.wait_idle(IDLE_TIMEOUT_S)
        assert pin_history(factory) == expected_history(PATTERNS[Feedback.REFUSED])


class HookPin(MockPin):  # type: ignore[misc]  # gpiozero has no type hints
    """gpiozero's MockPin that also calls `on_change(pin, state)` on each change."""

    on_change: Callable[[MockPin, bool], None] | None = None

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed and self.on_change is not None:
            self.on_change(self, value)
        return changed


def test_a_newer_feedback_cuts_the_playing_one_short_and_ends_all_off() -> None:
    factory = MockFactory(pin_class=HookPin)
    with Indicators(GREEN, RED, BUZZER, pin_factory=factory) as leds:
        red: Any = factory.pin(RED)
        fired = threading.Event()

        def preempt(pin: MockPin, state: bool) -> None:
            # Runs on the player thread while FAULT's first step is being written: the
            # next person's scan arrives exactly then.
            if state and not fired.is_set():
                fired.set()
                leds.show(Feedback.ACCEPTED)

        red.on_change = preempt
        leds.show(Feedback.FAULT)
        assert leds.wait_idle(IDLE_TIMEOUT_S)
        assert fired.is_set()
        history = pin_history(factory)
    # FAULT got as far as its first step, then ACCEPTED played in full.
    assert history == expected_history([PATTERNS[Feedback.FAULT][0], *PATTERNS[Feedback.ACCEPTED]])
    assert flashes(history)["red"] == 1


def test_a_burst_of_feedback_ends_with_everything_off() -> None:
    factory = MockFactory()
    with Indicators(GREEN, RED, BUZZER, pin_factory=factory) as leds:
        for feedback in [*Feedback, *Feedback]:
            leds.show(feedback)
        assert leds.wait_idle(IDLE_TIMEOUT_S)
        assert [factory.pin(pin).state for pin in PINS.values()] == [False, False, False]
        history = pin_history(factory)
    # The last one shown always plays to its end.
    tail = expected_history(PATTERNS[list(Feedback)[-1]])
    for name, states in history.items():
        assert states[-len(tail[name]) :] == tail[name]


@pytest.fixture
def new_threads() -> Iterator[Callable[[], set[threading.Thread]]]:
    before = set(threading.enumerate())
    yield lambda: set(threading.enumerate()) - before


def test_close_stops_the_player_switches_off_and_releases_the_pins(
    new_threads: Callable[[], set[threading.Thread]],
) -> None:
    factory = MockFactory()
    leds = Indicators(GREEN, RED, BUZZER, pin_factory=factory)
    assert new_threads()
    leds.show(Feedback.FAULT)
    leds.close()
    leds.close()
    assert not any(thread.is_alive() for thread in new_threads())
    assert [factory.pin(pin).state for pin in PINS.values()] == [False, False, False]
    leds.show(Feedback.ACCEPTED)  # after close: ignored, not an error
    assert leds.wait_idle(0)
    assert factory.pin(GREEN).state is False
    LED(GREEN, pin_factory=factory).close()  # the pins were released


def test_a_pin_clash_at_construction_releases_what_was_taken() -> None:
    factory = MockFactory()
    with pytest.raises(GPIOPinInUse):
        Indicators(GREEN, GREEN, BUZZER, pin_factory=factory)
    LED(GREEN, pin_factory=factory).close()
