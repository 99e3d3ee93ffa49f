"""The dashboard in a real browser: headless Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
import redis.asyncio as aioredis
from aiohttp import web
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import DatabaseConfig, MemoryTransport, NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.breakers import Breakers
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.middleware import CircuitBreaker
from dramatiq_shared.relay import MemorySource, RedisSource, create_app
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.stores import AuditLog, DeadLetterStore

from ..conftest import service_missing, wait_until
from ..middleware.conftest import install
from .conftest import SECRET, RelayProcess, RunningRelay, an_import, publish_all

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTES = 10
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH = "(parseFloat(document.querySelector('#progress > div').style.width) || 0)"


def publish_an_import(transport: MemoryTransport, stop: threading.Event) -> None:
    """Ten notes over about three seconds; the seventh fails."""
    for n in range(1, NOTES + 1):
        if stop.is_set():
            return
        note = f"n-{n}"
        status = NoteStatus.FAILED if n == 7 else NoteStatus.COMPLETED
        transport.append(
            [
                StatusEvent(
                    "imp-b",
                    NoteStatus.PROCESSING,
                    note_id=note,
                    indent_level=1,
                    message=f"parsing note {n}",
                    context="parse_note",
                    metadata={"title": f"Soup {n}"},
                ),
                StatusEvent(
                    "imp-b",
                    status,
                    note_id=note,
                    indent_level=1,
                    message="no ingredients found" if n == 7 else "parsed",
                    context="parse_note",
                ),
                StatusEvent(
                    "imp-b",
                    NoteStatus.PROCESSING,
                    context="import",
                    current_count=n,
                    total_count=NOTES,
                    message=f"{n} of {NOTES} done",
                ),
            ],
            int(time.time() * 1000),
        )
        time.sleep(0.3)


def playwright_or_missing() -> Any:
    """Playwright's ``sync_playwright``, once it and Chromium are known to be there."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError as error:
        service_missing("playwright", error)
    if not Path(CHROMIUM).exists():
        service_missing("chromium", FileNotFoundError(CHROMIUM))
    return sync_playwright


def launch(playwright: Any) -> Any:
    """Headless Chromium, quiet."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)


def test_the_page_shows_progress_advancing_and_a_failed_note_in_its_colour() -> None:
    sync_playwright = playwright_or_missing()
    transport = MemoryTransport()

    def make() -> web.Application:
        return create_app(MemorySource(transport), secret=SECRET)

    stop = threading.Event()
    publisher = threading.Thread(target=publish_an_import, args=(transport, stop))
    with RunningRelay(make) as relay, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.goto(f"{relay.url}/?import=imp-b&token={sign('imp-b', SECRET)}")
            publisher.start()
            bar = page.locator("#progress > div")
            page.wait_for_function(f"{WIDTH} > 0")
            early = float(bar.evaluate("e => parseFloat(e.style.width)"))
            failed = page.locator('tr[data-status="FAILED"] .status')
            failed.wait_for(timeout=15_000)
            page.wait_for_function(
                f"{WIDTH} >= 100",
                timeout=15_000,
            )
            late = float(bar.evaluate("e => parseFloat(e.style.width)"))
            colour = failed.evaluate("e => getComputedStyle(e).backgroundColor")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            rows = page.locator("#rows tr").count()
            charted = page.locator("#throughput svg").get_attribute("data-total")
            note_text = page.locator('tr[data-status="FAILED"]').inner_text()
        finally:
            stop.set()
            browser.close()
            if publisher.is_alive():
                publisher.join()
    assert 0 < early < late == 100  # the bar advanced as events came in
    assert colour == "rgb(198, 40, 40)"  # FAILED's red
    assert "Soup 7" in note_text  # its title, from the live event's metadata
    assert "note n-7" in note_text
    assert "no ingredients found" in note_text
    assert rows == NOTES
    assert charted == str(NOTES)  # the throughput chart counted each note's end, live
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


FINAL = (
    "document.querySelector('#progress-text').textContent.includes('2 of 1000 failed')"
    " && document.querySelector('#counts [data-status=COMPLETED]')?.dataset.count === '998'"
)


def shown_after(page: Any, url: str) -> float:
    """Seconds from the start of the navigation to ``url`` until the page shows FINAL."""
    page.goto(url)
    # performance.now() is the time since the page's navigation began.
    handle = page.wait_for_function(
        f"({FINAL}) && performance.now()", timeout=10_000, polling="raf"
    )
    return float(handle.json_value()) / 1000


def test_a_late_joiner_sees_the_final_state_of_a_12000_line_import_within_a_second(
    relay_process: RelayProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sync_playwright = playwright_or_missing()
    transport = RedisTransport(redis_client, maxlen=100_000)
    events = an_import("imp-late", notes=1_000, lines=12, failing=frozenset({7, 300}))
    publish_all(transport, events, batch=500)
    start, stop = relay_process
    url = start()
    token = sign("imp-late", SECRET)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            # The first late joiner makes the relay fold the import's 14,334 events; the
            # next one gets the snapshot the relay keeps, brought up to date.
            first = browser.new_page(viewport={"width": 1280, "height": 800})
            cold = shown_after(first, f"{url}/?import=imp-late&token={token}")
            first.close()
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            sockets: list[Any] = []

            def opened(ws: Any) -> None:  # Playwright takes no built-in as a handler
                sockets.append(ws)

            page.on("websocket", opened)
            warm = shown_after(page, f"{url}/?import=imp-late&token={token}")
            shown = page.evaluate(
                "[...document.querySelectorAll('#rows tr')].map(r => r.dataset.status)"
            )
            failed_rows = page.locator('#rows tr[data-status="FAILED"]').all_inner_texts()
            page.screenshot(path=str(tmp_path / "import-late-joiner.png"), full_page=False)
            # The relay dies without a goodbye (1006) while two more events come, and
            # returns: the page shows them, having reconnected a few times, not in a loop.
            stop(signal.SIGKILL)
            transport.append(
                [
                    StatusEvent("imp-late", NoteStatus.PROCESSING, note_id="n-3", context="note"),
                    StatusEvent(
                        "imp-late",
                        NoteStatus.COMPLETED,
                        note_id="n-1001",
                        context="note",
                        message="a late note",
                    ),
                ],
                int(time.time() * 1000),
            )
            time.sleep(1.5)
            start()
            page.wait_for_function(
                "document.querySelector('#counts [data-status=COMPLETED]')?.dataset.count"
                " === '999'",
                timeout=20_000,
            )
            page.wait_for_function(
                "document.querySelector('#connection').textContent === 'live'", timeout=10_000
            )
            last_id = int(page.evaluate("document.body.dataset.lastEventId"))
            n3 = page.evaluate(
                "document.querySelector('#rows tr[data-key=\"note n-3\"]')?.dataset.status"
            )
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(tmp_path / "import-phone.png"), full_page=False)
        finally:
            browser.close()
    print(
        f"late joiner to {len(events)} events: the final state shown {cold:.2f} s after the"
        f" navigation began (the relay folding them), {warm:.2f} s (the relay's snapshot)"
    )
    print(f"screenshots: {tmp_path / 'import-late-joiner.png'}, {tmp_path / 'import-phone.png'}")
    assert warm < 1.0
    assert cold < 3.0  # 0.3-0.5 s of folding on an idle machine; this one is shared
    assert "PROCESSING" not in shown  # every third note's late line event did not win
    assert shown[:2] == ["FAILED", "FAILED"]  # failures first
    assert any("note n-7" in row and "no ingredients found" in row for row in failed_rows)
    assert last_id == len(events) + 2
    assert n3 is None or n3 == "COMPLETED"
    assert 2 <= len(sockets) <= 6  # reconnected with backoff, no 1006 loop


def guarded_actor(
    redis_url: str,
) -> tuple[StubBroker, Any, threading.Event, list[dict[str, Any]]]:
    """A StubBroker whose actor is guarded by the breaker ``usda-api``: the broker, the
    actor, an event set when it runs, and the delay and options of each enqueue."""
    broker = StubBroker()
    broker.add_middleware(CircuitBreaker(redis_url=redis_url, breakers={"usda-api": {}}))
    install(broker)
    ran = threading.Event()
    deferrals: list[dict[str, Any]] = []

    class Enqueued(dramatiq.Middleware):
        """The delay and options of every message enqueued."""

        def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            deferrals.append({"delay": delay, **message.options})

    broker.add_middleware(Enqueued())

    @dramatiq.actor(broker=broker, breaker="usda-api")
    def call_usda() -> None:
        ran.set()

    return broker, call_usda, ran, deferrals


def test_a_breaker_forced_open_from_the_page_defers_the_workers_messages_and_is_audited(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    sync_playwright = playwright_or_missing()
    database = init_database(DatabaseConfig(url=sqlite_url))
    create_tables(database)
    audit = AuditLog(database)
    relay_breakers = Breakers(redis_client)
    relay_breakers["usda-api"].close()  # a breaker the workers know, closed
    broker, call_usda, ran, deferrals = guarded_actor(redis_url)

    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(
            RedisSource(client),
            secret=SECRET,
            breaker_client=client,
            breakers=relay_breakers,
            audit=audit,
        )

    admin = sign("*", SECRET, subject="ops-alice")
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    with RunningRelay(make) as relay, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{relay.url}/?view=breakers&token={admin}")
            row = page.locator('#breakers tr[data-breaker="usda-api"]')
            row.wait_for()
            assert row.get_attribute("data-state") == "closed"
            row.locator('button[data-action="open"]').click()
            page.locator('#breakers tr[data-breaker="usda-api"][data-state="open"]').wait_for()
            page.screenshot(path=str(tmp_path / "breakers.png"), full_page=True)
            worker.start()
            call_usda.send()
            deferred = wait_until(lambda: len(deferrals) > 1, time.monotonic() + 10)
            time.sleep(0.3)  # it would have run by now
            page.goto(f"{relay.url}/?view=audit&token={admin}")
            entry = page.locator('#audit tr[data-action="breaker.open"][data-target="usda-api"]')
            entry.wait_for()
            entry_text = entry.inner_text()
            page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)
            page.goto(f"{relay.url}/?view=workers&token={admin}")
            page.locator("#queues").wait_for()
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(tmp_path / "workers-phone.png"), full_page=True)
        finally:
            worker.stop()
            browser.close()
            relay_breakers.close()
    print(f"screenshots: {tmp_path}/breakers.png, audit.png, workers-phone.png")
    assert deferred  # the open breaker sent the message back, to run once it closes...
    assert deferrals[1]["breaker_deferrals"] == 1
    assert deferrals[1]["delay"] > 50_000  # the breaker's 60 s, less what has passed
    assert not ran.is_set()  # ...without running it
    assert "ops-alice" in entry_text
    assert [(e.who, e.action, e.target) for e in audit.list()] == [
        ("ops-alice", "breaker.open", "usda-api")
    ]


def test_a_dead_letter_replayed_from_the_page_runs_again_and_leaves_the_list(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    sync_playwright = playwright_or_missing()
    database = init_database(DatabaseConfig(url=sqlite_url))
    create_tables(database)
    store = DeadLetterStore(database)
    audit = AuditLog(database)
    broker = StubBroker()
    install(broker)
    ran: list[str] = []

    @dramatiq.actor(broker=broker)
    def parse_note(note_id: str) -> None:
        ran.append(note_id)

    for note in ("n-1", "n-2"):
        store.record(
            parse_note.message(note).asdict()
            | {"options": {"error_history": [{"attempt": 1, "error_type": "builtins.KeyError"}]}},
            error_type="builtins.KeyError",
            error_message=f"no title in {note}",
            reason="exhausted",
        )

    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(
            RedisSource(client),
            secret=SECRET,
            breaker_client=client,
            audit=audit,
            dead_letters=store,
            broker=broker,
        )

    admin = sign("*", SECRET, subject="ops-bob")
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    with RunningRelay(make) as relay, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{relay.url}/?view=dead-letters&token={admin}")
            page.locator("#dead-letters tr[data-id]").nth(1).wait_for()
            page.fill("#dl-text", "n-2")
            page.click("#dl-form button[type=submit]")
            page.wait_for_function(
                "document.querySelectorAll('#dead-letters tr[data-id]').length === 1"
            )
            page.locator("#dead-letters tr[data-id] button.link").click()
            page.locator("#dl-history tr td").first.wait_for()
            history = page.locator("#dl-history").inner_text()
            page.screenshot(path=str(tmp_path / "dead-letters.png"), full_page=True)
            page.fill("#dl-text", "")
            page.click("#dl-form button[type=submit]")
            page.wait_for_function(
                "document.querySelectorAll('#dead-letters tr[data-id]').length === 2"
            )
            page.locator('#dead-letters tr[data-id] input[aria-label$=" 2"]').check()
            page.click("#dl-replay-selected")
            page.wait_for_function(
                "document.querySelectorAll('#dead-letters tr[data-id]').length === 1"
            )
            left = page.locator("#dead-letters tr[data-id]").inner_text()
            note = page.locator("#ops-note").inner_text()
            assert wait_until(lambda: ran, time.monotonic() + 10)
        finally:
            worker.stop()
            browser.close()
    print(f"screenshot: {tmp_path / 'dead-letters.png'}")
    assert "builtins.KeyError" in history
    assert ran == ["n-2"]  # it ran again...
    assert "no title in n-1" in left  # ...and left the list, the other one stays
    assert "1 of 1 enqueued again" in note
    (entry,) = audit.list()
    assert (entry.who, entry.action, entry.target, entry.count) == (
        "ops-bob",
        "dead_letters.retry",
        "ids=[2]",
        1,
    )


def test_the_imports_view_and_a_status_filter_that_shows_exactly_the_failed_notes(
    redis_relay: RunningRelay, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sync_playwright = playwright_or_missing()
    failing = frozenset({7, 300, 512})
    publish_all(
        RedisTransport(redis_client), an_import("imp-f", notes=600, lines=3, failing=failing)
    )
    publish_all(RedisTransport(redis_client), an_import("imp-ok", notes=5, lines=1))
    admin = sign("*", SECRET)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{redis_relay.url}/?token={admin}")
            page.locator('#imports tr[data-import="imp-f"]').wait_for()
            overview = {
                key: page.locator(f'#imports tr[data-import="{key}"]').inner_text()
                for key in ("imp-f", "imp-ok")
            }
            sparks = page.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#imports tr[data-import]')]"
                ".map(r => [r.dataset.import, r.querySelector('svg.spark')?.dataset.total]))"
            )
            headings = page.evaluate(
                "[...document.querySelectorAll('#imports th')].map(th => th.textContent)"
            )
            statuses = page.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#imports tr[data-import]')]"
                ".map(r => [r.dataset.import, r.dataset.status]))"
            )
            page.screenshot(path=str(tmp_path / "imports.png"), full_page=True)
            page.click('#imports tr[data-import="imp-f"] a')
            page.wait_for_function(
                "document.querySelector('#counts [data-status=FAILED]')?.dataset.count === '3'"
            )
            charted = page.locator("#throughput svg").get_attribute("data-total")
            page.select_option("#status-filter", "FAILED")
            page.wait_for_function("document.querySelectorAll('#rows tr').length === 3")
            shown = page.evaluate(
                "[...document.querySelectorAll('#rows tr')]"
                ".map(r => [r.dataset.key, r.dataset.status])"
            )
            names = page.evaluate(
                "[...document.querySelectorAll('#rows tr')].map(r => [r.cells[0].innerText,"
                " r.querySelector('.lines [role=progressbar]')?.getAttribute('aria-valuenow')])"
            )
            page.click('#rows tr[data-key="note n-300"]')
            message = page.locator("#note-message").inner_text()
            page.screenshot(path=str(tmp_path / "import-failed-only.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(tmp_path / "import-failed-only-phone.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots: {tmp_path}/imports.png, import-failed-only.png, -phone.png")
    assert statuses == {"imp-f": "FAILED", "imp-ok": "COMPLETED"}
    assert "\t597\t3\t0\t" in overview["imp-f"]  # done, failed, retrying
    assert "600 of 600" in overview["imp-f"]
    assert headings[5:] == ["Retrying", "Dead letters", "Elapsed", "Rate", "ETA", "Throughput"]
    # The notes ended a second, from the snapshots: the overview's and the import's chart.
    assert sparks == {"imp-f": "600", "imp-ok": "5"}
    assert charted == "600"
    assert "notes/s · " in overview["imp-f"]
    assert " lines/s" in overview["imp-f"]
    assert "\t5\t0\t0\t" in overview["imp-ok"]
    assert sorted(shown) == [
        ["note n-300", "FAILED"],
        ["note n-512", "FAILED"],
        ["note n-7", "FAILED"],
    ]
    assert message == "ParseError: no ingredients found"
    # Each note by its title (from its events' metadata), with its lines' progress.
    assert sorted(names) == [
        ["Recipe 300 note n-300", "100"],
        ["Recipe 512 note n-512", "100"],
        ["Recipe 7 note n-7", "100"],
    ]


# The WCAG contrast ratio of each shown element of SHOWN_TEXT: its colour against the
# first background behind it that is not transparent (the page's white at the end).
CONTRASTS = """selector => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const channel = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const behind = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const shown = [...document.querySelectorAll(selector)].filter((e) => e.getClientRects().length);
  return shown.map((e) => {
    const [a, b] = [luminance(rgb(getComputedStyle(e).color)), luminance(behind(e))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    return [`${e.className || e.id}: ${e.textContent.trim().slice(0, 30)}`, ratio];
  });
}"""
# The status labels, and the grey text beside them.
SHOWN_TEXT = ".status, .hint, .note-id, #progress-text"
OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"
TABLE_BOX = "document.querySelector('#overview .scroll')"


def test_the_imports_view_fits_a_desktop_and_a_phone_and_its_labels_are_readable(
    redis_relay: RunningRelay, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sync_playwright = playwright_or_missing()
    transport = RedisTransport(redis_client)
    publish_all(transport, an_import("imp-wide", notes=40, lines=3, failing=frozenset({7})))
    publish_all(transport, an_import("imp-run", notes=10, lines=2)[:-14])  # still running
    admin = sign("*", SECRET)
    found: dict[str, Any] = {}
    hidden: dict[int, int] = {}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for width, height in ((1280, 800), (390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"{redis_relay.url}/?token={admin}")
                page.locator('#imports tr[data-import="imp-run"] svg.spark').wait_for()
                found[f"imports-{width}"] = (
                    page.evaluate(OVERFLOW),
                    page.evaluate(CONTRASTS, SHOWN_TEXT),
                )
                # Every column in sight, none behind the table's own scrolling.
                hidden[width] = page.evaluate(f"(e => e.scrollWidth - e.clientWidth)({TABLE_BOX})")
                page.screenshot(path=str(tmp_path / f"imports-{width}.png"), full_page=True)
                page.goto(f"{redis_relay.url}/?import=imp-wide&token={sign('imp-wide', SECRET)}")
                page.wait_for_function("document.querySelectorAll('#rows tr').length === 40")
                page.click('#rows tr[data-key="note n-7"]')
                page.locator("#note-detail").wait_for()
                found[f"import-{width}"] = (
                    page.evaluate(OVERFLOW),
                    page.evaluate(CONTRASTS, SHOWN_TEXT),
                )
                page.screenshot(path=str(tmp_path / f"import-{width}.png"), full_page=True)
                page.close()
        finally:
            browser.close()
    print(f"screenshots: {sorted(p.name for p in tmp_path.glob('*.png'))} in {tmp_path}")
    assert hidden == {1280: 0, 390: 0}  # on a phone, an import a card
    for view, (overflow, contrasts) in found.items():
        assert overflow <= 0, f"{view}: {overflow} px wider than the window"
        labels = [name for name, _ in contrasts if name.startswith("status ")]
        # Every status's label on the import's page (its counts), two on the overview.
        assert len(labels) >= (5 if view.startswith("import-") else 2), (view, labels)
        low = [(name, round(ratio, 2)) for name, ratio in contrasts if ratio < 4.5]
        assert not low, f"{view}: below WCAG AA's 4.5:1: {low}"
    assert len(list(tmp_path.glob("*.png"))) == 4
