"""Relay fan-out: a rate sweep of status events from Redis to 205 websocket clients.

The relay (``python -m dramatiq_shared.relay``) runs in its own process pinned to the
second core; the harness, pinned to the first, is kept light so that the figures are
the relay's and not its own:

* a publisher process appends events through ``RedisTransport`` at the asked rate,
  pacing itself in 10 ms ticks; it reports the rate it reached and how far behind its
  schedule it fell, and a step whose publisher fell behind says so;
* one asyncio process holds every websocket client (a bare websocket protocol on
  asyncio, no aiohttp: it only counts events and reads their timestamps): one client
  per import, each subscribed to its import, and admin clients subscribed to every
  import; beside them, a bare Redis subscriber reads the all-imports stream with XREAD;
* a private ``redis-server`` (``BENCH_REDIS_URL`` to use another) on the first core.

Each step of the sweep has imports of its own and fresh clients. It prints publish to
receive latency (p50, p99, p999 of every event, from the event's millisecond
``timestamp``, so each figure may read up to 1 ms high) for the bare subscriber, the
import clients and the admin clients, the relay's CPU per delivered and per published
event, its peak RSS, how busy the harness core was, and the highest rate at which the
relay's p99 stayed within 50 ms.

    python benchmarks/relay_fanout.py                  # 5k, 10k, 20k, 40k ev/s, 8 s each
    python benchmarks/relay_fanout.py --rates 500 --imports 5 --admins 1 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import re
import resource
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import redis
import redis.asyncio as aioredis
from scratch import free_port, redis_server

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.keys import Keys
from dramatiq_shared.relay.auth import ADMIN, sign
from dramatiq_shared.status.transport import MAX_BATCH, batch_entry

SECRET = "benchmark-secret-32-bytes-long!!"
KEYS = Keys()
TICK = 0.01
#: The p99 the sweep's ceiling is measured against, in ms.
TARGET_P99 = 50.0
#: Seconds the publisher may fall behind its schedule and still count as on pace.
MAX_BEHIND = 0.05
TIMESTAMP = re.compile(rb'"timestamp":(\d+)')


def publish(
    url: str, *, rate: int, prefix: str, imports: int, seconds: float, out: Connection
) -> None:
    """Append ``rate`` events a second for ``seconds``, round-robin over the imports.

    Each 10 ms tick appends what the schedule says is due by then, in one batch (at
    most ``MAX_BATCH``), and notes how far behind the schedule it is. Sends back
    (events sent, seconds it took, seconds behind at worst, CPU seconds).
    """
    transport = RedisTransport(redis.Redis.from_url(url), maxlen=10_000)
    # Made once: building events is not what is measured, appending them is.
    events = [StatusEvent(f"{prefix}{n}", NoteStatus.PROCESSING) for n in range(imports)]
    total = int(rate * seconds)
    start = time.time()
    sent, behind = 0, 0.0
    while sent < total:
        elapsed = time.time() - start
        due = min(total, int(rate * elapsed))
        count = min(due - sent, MAX_BATCH)
        if count > 0:
            batch = [events[(sent + n) % imports] for n in range(count)]
            transport.append(batch, int(time.time() * 1000))
            sent += count
        behind = max(behind, (int(rate * elapsed) - sent) / rate)
        time.sleep(max(0.0, TICK - (time.time() - start - elapsed)))
    duration = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.send((sent, duration, behind, usage.ru_utime + usage.ru_stime))


@dataclass
class Receiver:
    """Events one kind of receiver got, and the latency of each."""

    count: int = 0
    closes: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def take(self, data: bytes, now: float) -> None:
        self.count += data.count(b'"type":"event"')
        self.latencies += [now - int(ms) / 1000 for ms in TIMESTAMP.findall(data)]

    def percentiles(self) -> str:
        if not self.latencies:
            return f"{'-':>6} {'-':>6} {'-':>6}"
        ordered = sorted(self.latencies)
        return " ".join(
            f"{ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000:6.1f}"
            for q in (0.5, 0.99, 0.999)
        )

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] * 1000 if ordered else float("inf")


class WebsocketClient(asyncio.Protocol):
    """A websocket client that subscribes, then only counts what it receives.

    Frames from the server are unmasked and, from the relay, never fragmented nor
    compressed (no extension is asked for); pings are answered.
    """

    def __init__(self, host: str, import_id: str, receiver: Receiver) -> None:
        self.host = host
        self.import_id = import_id
        self.receiver = receiver
        self.subscribed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        mask = os.urandom(4)
        masked = bytes(b ^ mask[n % 4] for n, b in enumerate(payload))
        length = len(payload)
        head = (
            bytes([0x80 | opcode, 0x80 | length])
            if length < 126
            else bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", length)
        )
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buffer[: buffer.find(b"\r\n")]:
                raise RuntimeError(f"the relay refused the websocket: {bytes(buffer[:end])!r}")
            del buffer[: end + 4]
            self.upgraded = True
            token = sign(self.import_id, SECRET)
            self.send(
                0x1,
                f'{{"type":"subscribe","import_id":"{self.import_id}","token":"{token}"}}'.encode(),
            )
        start = 0
        while len(buffer) - start >= 2:
            opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            head = 2
            if length == 126:
                head, (length,) = 4, struct.unpack_from("!H", buffer, start + 2)
            elif length == 127:
                head, (length,) = 10, struct.unpack_from("!Q", buffer, start + 2)
            if len(buffer) - start < head + length:
                break
            payload = bytes(buffer[start + head : start + head + length])
            start += head + length
            if opcode == 0x1:
                if not self.subscribed.done() and b'"subscribed"' in payload:
                    self.subscribed.set_result(None)
                self.receiver.take(payload, now)
            elif opcode == 0x9:
                self.send(0xA, payload)
            elif opcode == 0x8:
                self.receiver.closes.append(struct.unpack("!H", payload[:2])[0] if payload else 0)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"client {self.import_id} lost: {exc}"))


async def bare_subscriber(url: str, receiver: Receiver, stop: asyncio.Event) -> None:
    """Read the all-imports stream as the relay does, timing each event like the clients."""
    client = aioredis.from_url(url)
    last = (await client.xrevrange(KEYS.all_status, count=1) or [(b"0-0", None)])[0][0]
    while not stop.is_set():
        replies = await client.xread({KEYS.all_status: last}, count=1_000, block=100)
        now = time.time()
        for _, entries in replies or []:
            for entry_id, fields in entries:
                last = entry_id
                for _, _, event in batch_entry(fields):
                    receiver.take(b'"type":"event"' + event.encode(), now)
    await client.aclose()


def process_figures(pid: int) -> tuple[int, float]:
    """Peak RSS (VmHWM) in KiB and CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return peak, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Step:
    """What one rate of the sweep measured, against one relay."""

    relay: str
    rate: int
    published: int
    duration: float
    behind: float
    wall: float
    bare: Receiver
    imports: Receiver
    admins: Receiver
    relay_cpu: float
    relay_peak: int
    #: CPU seconds on the harness core: the clients' process, the publisher, Redis.
    harness: tuple[float, float, float]
    admin_count: int

    @property
    def expected(self) -> int:
        return self.published * (1 + self.admin_count)

    @property
    def delivered(self) -> int:
        return self.imports.count + self.admins.count

    @property
    def on_pace(self) -> bool:
        return self.behind <= MAX_BEHIND

    @property
    def holds(self) -> bool:
        return (
            self.on_pace
            and self.delivered == self.expected
            and max(self.imports.p99(), self.admins.p99()) <= TARGET_P99
        )


@contextmanager
def relay_process(redis_url: str, source: str, core: set[int] | None) -> Iterator[tuple[str, int]]:
    """Run ``python -m dramatiq_shared.relay`` from ``source`` (a source tree; "" for the
    one this script imports), pinned to ``core``; yield its URL and pid."""
    env = {**os.environ, "REDIS_URL": redis_url, "DRAMATIQ_SHARED_SECRET": SECRET}
    env.pop("DATABASE_URL", None)
    env.pop("DRAMATIQ_SHARED_DB_URL", None)
    if source:
        env["PYTHONPATH"] = source
    port = free_port()
    command = [sys.executable, "-m", "dramatiq_shared.relay", "--port", str(port)]
    relay = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    if core is not None:
        os.sched_setaffinity(relay.pid, core)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                if relay.poll() is not None:
                    raise SystemExit("the relay did not start") from None
                time.sleep(0.1)
        yield url, relay.pid
    finally:
        relay.terminate()
        relay.wait(10)


async def run_step(
    args: argparse.Namespace,
    redis_url: str,
    relay_url: str,
    relay_pid: int,
    *,
    label: str,
    prefix: str,
    rate: int,
) -> Step:
    """Connect fresh clients to imports of ``prefix``, publish at ``rate``, and measure."""
    host = relay_url.split("//", 1)[1]
    address, port = host.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    imports, admins, bare = Receiver(), Receiver(), Receiver()
    targets = [(f"{prefix}{n}", imports) for n in range(args.imports)]
    targets += [(ADMIN, admins)] * args.admins
    clients: list[WebsocketClient] = []
    for import_id, receiver in targets:
        _, client = await loop.create_connection(
            lambda i=import_id, r=receiver: WebsocketClient(host, i, r), address, int(port)
        )
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in clients)), 30)
    for receiver in (imports, admins):
        receiver.count, receiver.latencies = 0, []  # the subscribed frames
    stop = asyncio.Event()
    reader = loop.create_task(bare_subscriber(redis_url, bare, stop))
    await asyncio.sleep(0.3)
    server = redis.Redis.from_url(redis_url)
    _, cpu_before = process_figures(relay_pid)
    clients_before, redis_before, started = own_cpu(), redis_cpu(server), time.time()
    results, sink = multiprocessing.get_context("fork").Pipe(duplex=False)
    publisher = multiprocessing.get_context("fork").Process(
        target=publish,
        args=(redis_url,),
        kwargs={
            "rate": rate,
            "prefix": prefix,
            "imports": args.imports,
            "seconds": args.seconds,
            "out": sink,
        },
    )
    publisher.start()
    while publisher.is_alive():
        await asyncio.sleep(0.1)
    published, duration, behind, publisher_cpu = results.recv()
    expected = published * (1 + args.admins)
    progress, quiet = -1, time.time()
    while imports.count + admins.count < expected and time.time() - quiet < 3:
        if imports.count + admins.count != progress:
            progress, quiet = imports.count + admins.count, time.time()
        await asyncio.sleep(0.1)
    stop.set()
    await reader
    peak, cpu_after = process_figures(relay_pid)
    harness = (own_cpu() - clients_before, publisher_cpu, redis_cpu(server) - redis_before)
    wall = time.time() - started
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    server.close()
    return Step(
        relay=label,
        rate=rate,
        published=published,
        duration=duration,
        behind=behind,
        wall=wall,
        bare=bare,
        imports=imports,
        admins=admins,
        relay_cpu=cpu_after - cpu_before,
        relay_peak=peak,
        harness=harness,
        admin_count=args.admins,
    )


def report(steps: list[Step], args: argparse.Namespace) -> None:
    print(
        f"{args.imports} import clients, {args.admins} admin clients, {args.seconds:g} s a step;"
        " latency p50 p99 p999 in ms, publish -> receive; CPU % of one core over the step"
    )
    print(
        f"{'relay':<6} {'asked/s':>7} {'sent/s':>7} {'late':>4} | {'bare subscriber':^20} |"
        f" {'import clients':^20} | {'admin clients':^20} | {'delivered':>9} |"
        f" {'µs/deliv':>8} {'µs/pub':>6} {'CPU%':>4} {'MiB':>3} |"
        f" {'harness CPU%: clients pub redis':>31}"
    )
    for s in steps:
        delivered = "all" if s.delivered == s.expected else f"{s.delivered / s.expected:.1%}"
        cut = len(s.imports.closes) + len(s.admins.closes)
        if cut:
            delivered += (
                f" {cut}x{','.join(map(str, sorted(set(s.imports.closes + s.admins.closes))))}"
            )
        clients, publisher, server = (part / s.wall * 100 for part in s.harness)
        print(
            f"{s.relay:<6} {s.rate:>7,} {s.published / s.duration:>7,.0f} {s.behind * 1000:>4.0f} |"
            f" {s.bare.percentiles()} | {s.imports.percentiles()} | {s.admins.percentiles()} |"
            f" {delivered:>9} |"
            f" {s.relay_cpu / max(1, s.delivered) * 1e6:>8.2f}"
            f" {s.relay_cpu / max(1, s.published) * 1e6:>6.1f}"
            f" {s.relay_cpu / s.wall * 100:>4.0f} {s.relay_peak // 1024:>3} |"
            f" {clients + publisher + server:>7.0f} = {clients:>3.0f} + {publisher:>3.0f}"
            f" + {server:>3.0f}"
        )
    for s in steps:
        if not s.on_pace:
            print(
                f"{s.relay} at {s.rate:,}/s: the publisher fell behind its schedule by more"
                f" than {MAX_BEHIND * 1000:.0f} ms (at worst {s.behind * 1000:.0f} ms)"
            )
    for relay in dict.fromkeys(s.relay for s in steps):
        held = [s.rate for s in steps if s.holds and s.relay == relay]
        print(
            f"{relay}: highest rate with import and admin p99 <= {TARGET_P99:.0f} ms, publisher"
            f" on pace, every event delivered: {f'{max(held):,}/s' if held else 'none asked'}"
        )
    if args.baseline:
        print(
            "µs/deliv ratio this/baseline, rate by rate: "
            + ", ".join(
                f"{a.rate:,} {a.relay_cpu / a.delivered / (b.relay_cpu / b.delivered):.2f}"
                for a, b in zip(steps[::2], steps[1::2], strict=True)
                if a.delivered and b.delivered
            )
        )


async def sweep(
    args: argparse.Namespace, redis_url: str, pinned: tuple[set[int], set[int]] | None
) -> int:
    relays = [("this", "")] + ([("base", args.baseline)] if args.baseline else [])
    steps = []
    for number, rate in enumerate(args.rates):
        for label, source in relays:  # alternately, rate by rate: the same machine state
            with relay_process(redis_url, source, pinned and pinned[1]) as (url, pid):
                steps.append(
                    await run_step(
                        args,
                        redis_url,
                        url,
                        pid,
                        label=label,
                        prefix=f"{label}{number}-",
                        rate=rate,
                    )
                )
    report(steps, args)
    return 0 if all(s.delivered == s.expected for s in steps if s.on_pace) else 1


def cores() -> tuple[set[int], set[int]] | None:
    """The harness's core and the relay's, or None when fewer than two are ours."""
    ours = sorted(os.sched_getaffinity(0))
    return ({ours[0]}, {ours[1]}) if len(ours) >= 2 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda text: [int(r) for r in text.split(",")],
        default=[5_000, 10_000, 20_000, 40_000],
        help="events a second, comma-separated (5000,10000,20000,40000)",
    )
    parser.add_argument("--imports", type=int, default=200, help="imports, one client each (200)")
    parser.add_argument("--admins", type=int, default=5, help="clients of every import (5)")
    parser.add_argument("--seconds", type=float, default=8, help="publishing time a step (8)")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        default="",
        help="also run, rate by rate, the relay of this source tree (e.g. a git archive of"
        " an older commit), as 'base'",
    )
    args = parser.parse_args(argv)

    pinned = cores()
    if pinned is None:
        print("fewer than 2 cores: the relay and the harness share them")
    else:
        print(f"harness on core {min(pinned[0])}, relay on core {min(pinned[1])}")
    mine = os.sched_getaffinity(0)
    try:
        if pinned is not None:
            os.sched_setaffinity(0, pinned[0])  # redis-server and the publisher inherit it
        with redis_server() as redis_url:
            redis.Redis.from_url(redis_url).flushdb()
            try:
                return asyncio.run(sweep(args, redis_url, pinned))
            finally:
                redis.Redis.from_url(redis_url).flushdb()
    finally:
        os.sched_setaffinity(0, mine)  # when run in-process, as the smoke test does


if __name__ == "__main__":
    sys.exit(main())
