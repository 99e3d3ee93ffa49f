"""The dashboard in a real browser: headless Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from aiohttp import web

from dramatiq_shared import MemoryTransport, NoteStatus, StatusEvent
from dramatiq_shared.relay import MemorySource, create_app
from dramatiq_shared.relay.auth import sign

from ..conftest import service_missing
from .conftest import SECRET, RunningRelay

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTES = 10
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


def test_the_page_shows_progress_advancing_and_a_failed_note_in_its_colour() -> None:
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError as error:
        service_missing("playwright", error)
    if not Path(CHROMIUM).exists():
        service_missing("chromium", FileNotFoundError(CHROMIUM))
    transport = MemoryTransport()

    def make() -> web.Application:
        return create_app(MemorySource(transport), secret=SECRET)

    stop = threading.Event()
    publisher = threading.Thread(target=publish_an_import, args=(transport, stop))
    with RunningRelay(make) as relay, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
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
