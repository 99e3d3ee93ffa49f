"""The actor of the crash-loop tests: ``dramatiq tests.faults.crash_app``.

Every message stores a note and marks it done for its import, but the one numbered
``CRASH_POISON`` takes its worker process down: SIGKILL (how an OOM kill or a segfault
in a C extension looks from outside), or with ``CRASH_MODE=memory`` an allocation past
the process's address-space cap (a MemoryError, which is an exception, not a death).
The broker is RabbitMQ when ``RABBITMQ_URL`` is set, else Redis, tuned as in
``synthetic_app`` so a dead worker's messages come back in seconds; the suite's state
is on ``REDIS_URL`` either way. Each run is counted in Redis before anything else.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import get_stack, setup_broker
from dramatiq_shared.db import DatabaseOperations, NoteData

POISON = int(os.environ["CRASH_POISON"])
MODE = os.environ.get("CRASH_MODE", "kill")
QUEUE = os.environ.get("CRASH_QUEUE", "default")

if os.environ.get("RABBITMQ_URL"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    base: dramatiq.Broker = RabbitmqBroker(url=os.environ["RABBITMQ_URL"])
else:
    base = RedisBroker(
        url=os.environ["REDIS_URL"], heartbeat_timeout=2_000, maintenance_chance=100_000
    )
broker = setup_broker(base, redis_url=os.environ["REDIS_URL"])
stack = get_stack(broker)
operations = DatabaseOperations(stack.database)
assert stack.redis is not None
counter = stack.redis

if MODE == "memory":
    # A cap of 1 GiB above what the process has mapped now: a 4 GiB allocation fails.
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = mapped * 1024 + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


@dramatiq.actor(queue_name=QUEUE, max_attempts=3, base_delay=100, on_retry_exhausted="crash_failed")
def crash_or_store(import_id: str, n: int) -> None:
    counter.hincrby(f"faults:executions:{import_id}", str(n))
    if n == POISON:
        if MODE == "memory":
            bytearray(4 * 2**30)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)  # some work, so that good messages are in flight when it dies
    operations.create_or_update_note(
        f"{import_id}:{n}", NoteData(import_id=import_id, title=str(n))
    )
    stack.completion.mark_done(import_id, str(n))


@dramatiq.actor(queue_name=QUEUE)
def crash_failed(message: dict[str, Any], info: dict[str, Any]) -> None:
    import_id, n = message["args"]
    counter.hset(f"faults:failed:{import_id}", str(n), str(info["error_type"]))
    stack.completion.mark_done(import_id, str(n), ok=False)
