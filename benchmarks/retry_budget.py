"""Calls to a failing downstream with and without a retry budget, on 2 worker processes.

A stream of messages (``--rate`` a second, ``--messages`` in all) goes to 2 ``dramatiq``
worker processes whose actor calls a "service" that fails every call for ``--outage``
seconds in the middle of the stream (retries: 4 attempts, 100 ms to 1 s apart). The
run is made twice in one go, A without a budget and B with one (``ratio`` 0.1,
``minimum`` 10 a second, ``window`` the outage's length, refused retries deferred).
Each prints the calls the service got during the outage (first attempts and retries
apart, by whether the service was down when the call started), the bound the budget
promises for the retries (``ratio`` x the successes before the outage ended +
``minimum`` x the outage's seconds: the outage is one window), the messages completed,
dead-lettered and still deferred ``--drain`` seconds after the stream, and the B/A
ratio of retries during the outage.

    python benchmarks/retry_budget.py                      # 2,000 messages, 10 s outage
    python benchmarks/retry_budget.py --messages 300 --rate 100 --outage 1

Uses a Redis of its own (``BENCH_REDIS_URL``, else a private ``redis-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from scratch import redis_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Figures:
    """What one run measured."""

    first_in_outage: int
    retries_in_outage: int
    successes_before_end: int
    bound: float
    completed: int
    dead_lettered: int
    #: Neither yet when the drain ended: retries the budget still defers.
    pending: int
    seconds: float


def measure(
    url: str,
    *,
    budget: dict[str, Any] | None,
    messages: int,
    rate: float,
    outage: float,
    processes: int = 2,
    threads: int = 4,
    call_ms: int = 10,
    drain: float = 30.0,
) -> Figures:
    """One run: the workers started, the stream sent with the outage in its middle, the
    queue drained (or ``drain`` seconds passed after the stream), the workers stopped,
    the keys dropped."""
    run = f"budget-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "BUDGET_REDIS_URL": url,
            "BUDGET_RUN": run,
            "BUDGET_DIR": folder,
            "BUDGET_CALL_MS": str(call_ms),
            "BUDGET_CONFIG": json.dumps(budget),
        }
        env.pop("REDIS_URL", None)
        env.pop("RABBITMQ_URL", None)
        with open(Path(folder) / "workers.log", "w") as log:
            workers = subprocess.Popen(
                [
                    *(sys.executable, "-m", "dramatiq", "retry_budget_app"),
                    *("--processes", str(processes), "--threads", str(threads)),
                ],
                cwd=HERE,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its worker processes can be killed with it
            )
            try:
                return _drive(
                    client,
                    url,
                    run,
                    budget=budget,
                    messages=messages,
                    rate=rate,
                    outage=outage,
                    drain=drain,
                    processes=processes,
                )
            finally:
                workers.send_signal(signal.SIGTERM)
                try:
                    workers.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(workers.pid, signal.SIGKILL)
                    workers.wait()
                for key in client.scan_iter(match=f"{run}*", count=1_000):
                    client.delete(key)
                client.close()


def _drive(
    client: redis.Redis,
    url: str,
    run: str,
    *,
    budget: dict[str, Any] | None,
    messages: int,
    rate: float,
    outage: float,
    drain: float,
    processes: int,
) -> Figures:
    sender = RedisBroker(url=url, namespace=f"{run}-dq")

    def send(n: int) -> None:
        sender.enqueue(
            dramatiq.Message(
                queue_name="default", actor_name="call", args=(n,), kwargs={}, options={}
            )
        )

    # A probe a process, so both have booted before the stream starts.
    for n in range(-processes, 0):
        send(n)
    deadline = time.monotonic() + 60
    while client.scard(f"{run}:done") < processes:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker processes did not start; see their log")
        time.sleep(0.05)
    client.delete(f"{run}:done")

    duration = messages / rate
    outage_at = (duration - outage) / 2
    started = time.monotonic()
    successes: list[int] = []

    def service_outage() -> None:
        time.sleep(outage_at)
        client.set(f"{run}:down", 1)
        time.sleep(outage)
        # Every success the budget can count while the outage lasts came before its end.
        successes.append(sum(int(client.get(f"{run}:up:{k}") or 0) for k in ("first", "retry")))
        client.delete(f"{run}:down")

    toggler = threading.Thread(target=service_outage)
    toggler.start()
    for n in range(messages):
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        send(n)
    toggler.join()

    dead_key = f"{run}-dq:default.XQ"
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline:
        if client.scard(f"{run}:done") + client.zcard(dead_key) >= messages:
            break
        time.sleep(0.1)
    seconds = time.monotonic() - started
    sender.close()
    completed, dead = client.scard(f"{run}:done"), client.zcard(dead_key)
    ratio = budget.get("ratio", 0.1) if budget else 0.1
    minimum = budget.get("minimum", 10) if budget else 10
    return Figures(
        first_in_outage=int(client.get(f"{run}:down:first") or 0),
        retries_in_outage=int(client.get(f"{run}:down:retry") or 0),
        successes_before_end=successes[0],
        bound=ratio * successes[0] + minimum * outage,
        completed=completed,
        dead_lettered=dead,
        pending=messages - completed - dead,
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2_000, help="messages in all (2000)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages a second (100)")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the service fails (10)")
    parser.add_argument("--threads", type=int, default=4, help="threads a worker process (4)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to drain after (30)")
    args = parser.parse_args(argv)
    budget = {"ratio": 0.1, "minimum": 10, "window": round(args.outage * 1000)}
    print(
        f"{args.messages} messages at {args.rate:g}/s on 2 processes x {args.threads} threads;"
        f" the service fails for {args.outage:g} s in the middle; budget {budget}"
    )
    figures = {}
    with redis_server() as url:
        for label, config in (("A no budget", None), ("B budget", budget)):
            found = figures[label] = measure(
                url,
                budget=config,
                messages=args.messages,
                rate=args.rate,
                outage=args.outage,
                threads=args.threads,
                drain=args.drain,
            )
            print(
                f"{label:<12} calls in the outage: {found.first_in_outage} first attempts,"
                f" {found.retries_in_outage} retries (bound {found.bound:.0f} = 0.1 x"
                f" {found.successes_before_end} successes + 10 x {args.outage:g} s);"
                f" completed {found.completed}, dead-lettered {found.dead_lettered},"
                f" still deferred {found.pending}, after {found.seconds:.1f} s"
            )
    a, b = figures["A no budget"], figures["B budget"]
    print(f"B/A retries in the outage: {b.retries_in_outage / max(1, a.retries_in_outage):.3f}")
    print(f"B retries within the bound: {b.retries_in_outage <= b.bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
