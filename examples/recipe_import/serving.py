"""Serving an aiohttp application from a thread of this process, beside the workers."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

__all__ = ["ThreadedSite"]


class ThreadedSite:
    """An aiohttp application served by an event loop in a daemon thread.

    Parameters:
      app: The application.
      host: The address to listen on. Default ``"127.0.0.1"``.
      port: The port; 0 picks a free one. Default 0.
    """

    def __init__(self, app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        self._thread = threading.Thread(target=self.loop.run_forever, name="site", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedSite:
        """Start serving.

        Raises:
          OSError: When the port is taken.
        """
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop serving (open websockets are closed) and end the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
