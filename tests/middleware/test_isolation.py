"""Isolation: side by side, or alone, with a bounded wait for those in flight."""

from __future__ import annotations

import threading
import time

from dramatiq_shared.middleware.isolation import ALONE, SHARED, Isolation


def test_alone_waits_for_those_in_flight_and_holds_back_new_ones() -> None:
    isolation = Isolation()
    order: list[str] = []
    isolation.enter()  # one in flight

    def alone() -> None:
        isolation.enter_alone(10)
        order.append("alone")
        time.sleep(0.05)
        order.append("alone done")
        isolation.leave(ALONE)

    def newcomer() -> None:
        isolation.enter()
        order.append("newcomer")
        isolation.leave(SHARED)

    suspect = threading.Thread(target=alone)
    suspect.start()
    time.sleep(0.05)  # the suspect waits now
    late = threading.Thread(target=newcomer)
    late.start()
    time.sleep(0.05)
    assert order == []  # neither runs beside the one in flight, the newcomer held back
    isolation.leave(SHARED)
    suspect.join(5)
    late.join(5)
    assert order == ["alone", "alone done", "newcomer"]


def test_alone_runs_beside_those_that_outlast_its_wait_but_never_beside_another_alone() -> None:
    isolation = Isolation()
    isolation.enter()  # outlasts the wait
    started = time.monotonic()
    isolation.enter_alone(0.1)
    assert 0.1 <= time.monotonic() - started < 2
    second = threading.Event()

    def another() -> None:
        isolation.enter_alone(0)
        second.set()
        isolation.leave(ALONE)

    other = threading.Thread(target=another)
    other.start()
    assert not second.wait(0.2)  # not beside the first one alone
    isolation.leave(ALONE)
    assert second.wait(5)
    other.join(5)
    isolation.leave(SHARED)
