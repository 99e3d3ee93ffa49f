"""A local nutrition service for the example, which can be told to fail or to be slow.

It stands for the third-party API an enrichment step calls, so a run can show circuit
breakers and retries at work without a network. Figures are made up, but stable: the
same name always gets the same figures.

==========================  =========================================================
``GET /nutrition?name=``    ``{"name", "kcal", "protein", "fat", "carbs"}`` per 100 g;
                            503 while failing
``POST /control``           ``{"fail": bool, "delay": ms}``: fail every request, or
                            answer each after ``delay`` milliseconds
``GET /stats``              ``{"requests", "failed", "fail", "delay"}``
==========================  =========================================================

Run it alone with ``python -m examples.recipe_import.nutrition --port 8471``; the main
job serves it in-process unless ``NUTRITION_URL`` names another.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .serving import ThreadedSite

__all__ = ["DEFAULT_PORT", "NutritionServer", "create_app", "figures"]

#: The port the main job serves it on, and the workers' default ``NUTRITION_URL``.
DEFAULT_PORT = 8471


def figures(name: str) -> dict[str, Any]:
    """Made-up but stable figures per 100 g for an ingredient name."""
    digest = hashlib.sha256(name.encode()).digest()
    return {
        "name": name,
        "kcal": digest[0] * 3,
        "protein": round(digest[1] / 8, 1),
        "fat": round(digest[2] / 8, 1),
        "carbs": round(digest[3] / 3, 1),
    }


class _State:
    def __init__(self) -> None:
        self.fail = False
        self.delay = 0
        self.requests = 0
        self.failed = 0

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "fail": self.fail,
            "delay": self.delay,
        }


_STATE = web.AppKey("state", _State)


async def _nutrition(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    state.requests += 1
    if state.delay:
        await asyncio.sleep(state.delay / 1000)
    if state.fail:
        state.failed += 1
        return web.json_response({"error": "the service is failing, as told"}, status=503)
    name = request.query.get("name", "").strip()
    if not name:
        return _refuse("name: a non-blank name is required")
    return web.json_response(figures(name))


async def _control(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    try:
        asked = await request.json()
    except ValueError:
        return _refuse("the body must be JSON")
    if not isinstance(asked, dict) or set(asked) - {"fail", "delay"}:
        return _refuse("the body must be an object with the keys fail and delay")
    fail, delay = asked.get("fail", state.fail), asked.get("delay", state.delay)
    if not isinstance(fail, bool):
        return _refuse(f"fail must be true or false, got {fail!r}")
    if not (isinstance(delay, int) and not isinstance(delay, bool) and 0 <= delay <= 60_000):
        return _refuse(f"delay must be an int from 0 to 60000 (ms), got {delay!r}")
    state.fail, state.delay = fail, delay
    return web.json_response(state.stats())


def _refuse(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].stats())


def create_app() -> web.Application:
    """The service's aiohttp application."""
    app = web.Application()
    app[_STATE] = _State()
    app.router.add_get("/nutrition", _nutrition)
    app.router.add_post("/control", _control)
    app.router.add_get("/stats", _stats)
    return app


class NutritionServer(ThreadedSite):
    """The service in a thread of this process: ``start()``, ``url``, ``control()``, ``stop()``.

    Parameters:
      host: The address to listen on. Default ``"127.0.0.1"``.
      port: The port; 0 picks a free one. Default 0.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(create_app(), host=host, port=port)

    @property
    def state(self) -> _State:
        return self.app[_STATE]

    def control(self, *, fail: bool | None = None, delay: int | None = None) -> None:
        """Make it fail (or recover), or slow, from this process."""
        state = self.state

        def change() -> None:
            state.fail = state.fail if fail is None else fail
            state.delay = state.delay if delay is None else delay

        self.loop.call_soon_threadsafe(change)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.recipe_import.nutrition")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    args = parser.parse_args(argv)
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
