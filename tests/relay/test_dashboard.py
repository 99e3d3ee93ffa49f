"""The dashboard in a real browser: headless Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from dramatiq_shared import MemoryTransport, NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.relay import MemorySource, create_app
from dramatiq_shared.relay.auth import sign

from ..conftest import service_missing
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
            note_text = page.locator('tr[data-status="FAILED"]').inner_text()
        finally:
            stop.set()
            browser.close()
            if publisher.is_alive():
                publisher.join()
    assert 0 < early < late == 100  # the bar advanced as events came in
    assert colour == "rgb(198, 40, 40)"  # FAILED's red
    assert "note n-7" in note_text
    assert "no ingredients found" in note_text
    assert rows == NOTES
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
