"""One process of the breaker tests: ``python breaker_trials.py REDIS_URL MODE THREADS START``.

``trials``: THREADS threads compete for half-open trials of the breaker "svc" until it
closes; each trial lasts 50 ms and succeeds. Prints the [start, end] wall-clock times
of the trials this process ran, as JSON.
``hold``: takes the trial lease, prints "trial", and sleeps (the test kills it).
``failures``: THREADS threads each report 25 failed calls; prints how many times this
process saw the breaker open, as JSON.
``watch``: calls through the healthy breaker, prints "ready" once its view answers,
then calls until one is refused and prints that moment's ``time.time()``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pybreaker
import redis

from dramatiq_shared import CircuitBreakerConfig, CircuitOpenError
from dramatiq_shared.breakers import Breakers

CONFIGS = {
    "trials": CircuitBreakerConfig(
        failure_threshold=1, reset_timeout=200, success_threshold=6, trial_timeout=5_000
    ),
    "hold": CircuitBreakerConfig(failure_threshold=1, reset_timeout=100, trial_timeout=1_500),
    "failures": CircuitBreakerConfig(failure_threshold=50, reset_timeout=60_000),
    "watch": CircuitBreakerConfig(failure_threshold=1, reset_timeout=60_000),
}


class Openings(pybreaker.CircuitBreakerListener):
    """Counts the transitions to open this process was told of."""

    def __init__(self) -> None:
        self.seen: list[str] = []  # appended by many threads: a list, not a counter

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        if new_state.name == "open":
            self.seen.append(old_state.name)


def watch(breaker: Any) -> None:
    warm_until = time.monotonic() + 0.5
    while time.monotonic() < warm_until:  # the view subscribes and learns it is healthy
        breaker.call(lambda: None)
    print("ready", flush=True)
    while True:
        try:
            breaker.call(lambda: None)
        except CircuitOpenError:
            print(time.time(), flush=True)
            return


def main(url: str, mode: str, threads: str, start: str) -> None:
    # Through Breakers, as workers do: its cached view answers while the breaker is healthy.
    breaker = Breakers(redis.Redis.from_url(url), default=CONFIGS[mode])["svc"]
    if mode == "watch":
        watch(breaker)
        return
    if mode == "hold":
        breaker.acquire()
        print("trial", flush=True)
        time.sleep(60)
        return
    trials: list[tuple[float, float]] = []
    opened = Openings()
    breaker.add_listener(opened)
    ready = threading.Barrier(int(threads))
    time.sleep(max(0.0, float(start) - time.time()))

    def report_failures() -> None:
        ready.wait()
        for _ in range(25):
            try:
                ticket = breaker.acquire()
            except CircuitOpenError:
                continue
            breaker.record_failure(ticket, RuntimeError("down"))

    def compete() -> None:
        ready.wait()
        while breaker.current_state != "closed":
            try:
                ticket = breaker.acquire()
            except CircuitOpenError:
                time.sleep(0.005)
                continue
            if ticket.trial is None:
                return  # closed in the meantime
            began = time.time()
            time.sleep(0.05)
            trials.append((began, time.time()))
            breaker.record_success(ticket)

    target = report_failures if mode == "failures" else compete
    pool = [threading.Thread(target=target) for _ in range(int(threads))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    json.dump(len(opened.seen) if mode == "failures" else trials, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
