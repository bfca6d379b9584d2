"""A TCP proxy between a service and Postgres or RabbitMQ that a test can cut and restore,
as a network fault would: cut() drops every connection and refuses new ones."""

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from tests.support import free_port

CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    def replace_port(self, url: str) -> str:
        """The same URL, through this proxy."""
        return url.replace(f"127.0.0.1:{self.target_port}", f"127.0.0.1:{self.port}")

    def run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(10)

    def start(self) -> "TcpProxy":
        self.thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        self.run(self.listen())

    def cut(self) -> None:
        self.run(self.drop_everything())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self.accept, "127.0.0.1", self.port)

    async def drop_everything(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, upstream}
        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))
        self.links -= {writer, upstream}
