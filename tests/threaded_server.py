"""``livefuse serve``'s app on an ephemeral 127.0.0.1 port, served from a thread of its own,
for tests whose clients block (raw sockets, FFmpeg's muxers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.web.server import ServerConfig, create_app


@dataclass
class Running:
    port: int
    app: web.Application
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving_in_thread(engine: Engine, settings: Settings, config: ServerConfig | None = None) -> Iterator[Running]:
    ready: dict[str, object] = {}
    started, stop = threading.Event(), threading.Event()

    def serve() -> None:
        async def main() -> None:
            app = create_app(config or ServerConfig(port=0), settings, engine)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ready.update(port=runner.addresses[0][1], app=app, loop=asyncio.get_running_loop())
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await runner.cleanup()

        asyncio.run(main())

    thread = threading.Thread(target=serve, name="test-server")
    thread.start()
    try:
        assert started.wait(30), "the server did not start"
        yield Running(ready["port"], ready["app"], ready["loop"])  # type: ignore[arg-type]
    finally:
        stop.set()
        thread.join(30)
