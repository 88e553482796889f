"""Debounce on the monotonic clock: the window, its edge, clock jumps, bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device.clock import ManualClock
from device.debounce import Debounce

AN = "id:064090123456"
BINH = "id:064202933488"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2021, 8, 15, 2, 0, tzinfo=UTC))


def test_a_person_is_recent_inside_the_window_only(clock: ManualClock) -> None:
    debounce = Debounce(300, clock.monotonic)
    assert not debounce.is_recent(AN)
    debounce.mark(AN)
    assert debounce.is_recent(AN)
    assert not debounce.is_recent(BINH)
    clock.advance(299.5)
    assert debounce.is_recent(AN)
    clock.advance(1.0)
    assert not debounce.is_recent(AN)


def test_the_window_edge_is_exclusive(clock: ManualClock) -> None:
    debounce = Debounce(300, clock.monotonic)
    debounce.mark(AN)
    clock.advance(299.999)
    assert debounce.is_recent(AN)
    clock.advance(0.001)
    assert clock.monotonic() == 300.0  # exactly the window, no float slack
    assert not debounce.is_recent(AN)


def test_scans_while_already_in_do_not_extend_the_window(clock: ManualClock) -> None:
    debounce = Debounce(300, clock.monotonic)
    debounce.mark(AN)
    for _ in range(5):  # the scanner asks, sees "already in", and does not mark
        clock.advance(50)
        assert debounce.is_recent(AN)
    clock.advance(50)
    assert not debounce.is_recent(AN)
    debounce.mark(AN)  # recorded again: a new window starts now
    clock.advance(299)
    assert debounce.is_recent(AN)


@pytest.mark.parametrize("jump", [timedelta(hours=-7), timedelta(days=365 * 3)])
def test_a_wall_clock_jump_changes_nothing(clock: ManualClock, jump: timedelta) -> None:
    debounce = Debounce(300, clock.monotonic)
    debounce.mark(AN)
    clock.advance(100)
    clock.set_wall(clock.now() + jump)  # NTP answers after a boot without a real-time clock
    assert debounce.is_recent(AN)
    clock.advance(199)
    assert debounce.is_recent(AN)
    clock.advance(1)
    assert not debounce.is_recent(AN)


def test_window_zero_turns_debounce_off(clock: ManualClock) -> None:
    debounce = Debounce(0, clock.monotonic)
    debounce.mark(AN)
    assert not debounce.is_recent(AN)
    assert len(debounce) == 0


def test_a_negative_window_is_refused(clock: ManualClock) -> None:
    with pytest.raises(ValueError):
        Debounce(-1, clock.monotonic)


def test_memory_stays_bounded_by_the_people_of_one_window(clock: ManualClock) -> None:
    debounce = Debounce(300, clock.monotonic)
    largest = 0
    for i in range(20_000):  # a person every second, for five and a half hours
        debounce.mark(f"id:064{i:09d}")
        largest = max(largest, len(debounce))
        clock.advance(1)
    assert largest == 300
    assert debounce.is_recent("id:064000019999")
    assert not debounce.is_recent("id:064000000000")
    clock.advance(298)  # the last mark (at 19 999 s) is now 299 s old, the others older
    assert debounce.forget_older() == 299
    assert len(debounce) == 1
    clock.advance(1)
    assert debounce.forget_older() == 1
    assert len(debounce) == 0


def test_marking_a_remembered_person_again_moves_them_to_the_back(clock: ManualClock) -> None:
    debounce = Debounce(300, clock.monotonic)
    debounce.mark(AN)
    clock.advance(200)
    debounce.mark(BINH)
    clock.advance(150)  # AN's window passed; BINH's has not
    debounce.mark(AN)
    clock.advance(200)  # BINH's passed at 500; AN is marked at 350, still recent at 550
    assert debounce.forget_older() == 1
    assert debounce.is_recent(AN)
    assert not debounce.is_recent(BINH)
