"""A TCP proxy in front of PostgreSQL that counts round trips and names the statements its clients send.

A round trip is a turn of the conversation: the client sends (one message or a pipelined batch) after having
heard from the server, and waits. The client's bytes are also read as PostgreSQL protocol messages, so every
statement executed (a simple query, or the Bind of a parsed one) is counted by its text. Clients must not use TLS
(`sslmode=disable`), or there would be nothing to read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import re
import threading
from collections.abc import Callable

_SSL_OR_GSS_REQUEST = (80877103, 80877104)


@dataclasses.dataclass(frozen=True)
class Traffic:
    round_trips: int
    connections: int
    statements: dict[str, int]
    """How often each statement was sent, by its first words."""


class _Reader:
    """Splits one client's byte stream into protocol messages, noting the SQL they carry."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self.buffer = bytearray()
        self.started = False
        self.note = note
        self.prepared: dict[bytes, str] = {}

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:  # untyped: an SSL or GSS request, then the startup message
                if len(self.buffer) < 8 or len(self.buffer) < int.from_bytes(self.buffer[:4], "big"):
                    return
                size = int.from_bytes(self.buffer[:4], "big")
                self.started = int.from_bytes(self.buffer[4:8], "big") not in _SSL_OR_GSS_REQUEST
                del self.buffer[:size]
                continue
            if len(self.buffer) < 5 or len(self.buffer) < 1 + int.from_bytes(self.buffer[1:5], "big"):
                return
            kind, size = chr(self.buffer[0]), int.from_bytes(self.buffer[1:5], "big")
            body = bytes(self.buffer[5 : 1 + size])
            del self.buffer[: 1 + size]
            if kind == "Q":  # a simple query
                self.note(_label(body.split(b"\0")[0]))
            elif kind == "P":  # Parse: statement name, text (psycopg prepares a query run 5 times, then binds it)
                statement, sql = body.split(b"\0")[:2]
                self.prepared[statement] = _label(sql)
            elif kind == "B":  # Bind: portal name, statement name; each is one execution
                self.note(self.prepared.get(body.split(b"\0")[1], "?"))


def _label(sql: bytes) -> str:
    words = re.sub(r"\s+", " ", sql.decode(errors="replace")).strip()
    return words if len(words) <= 60 else words[:57] + "..."


class CountingProxy:
    """Listens on a free port of 127.0.0.1 and forwards to the server, counting; runs in a thread of its own."""

    def __init__(self, server_host: str, server_port: int) -> None:
        self.server = (server_host, server_port)
        self.port = 0
        self._lock = threading.Lock()
        self._round_trips = 0
        self._connections = 0
        self._statements: collections.Counter[str] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def take(self) -> Traffic:
        """What was counted since the last call, and start counting afresh."""
        with self._lock:
            traffic = Traffic(self._round_trips, self._connections, dict(self._statements))
            self._round_trips = self._connections = 0
            self._statements = collections.Counter()
        return traffic

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        listening = self._loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = listening.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        listening.close()
        relays = asyncio.all_tasks(self._loop)
        for relay in relays:
            relay.cancel()
        self._loop.run_until_complete(asyncio.gather(*relays, return_exceptions=True))
        self._loop.close()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(*self.server)
        with self._lock:
            self._connections += 1
        heard = [True]  # whether the server spoke since the client last sent: the client's next send is a turn
        reader = _Reader(lambda statement: self._statements.update((statement,)))

        async def upstream() -> None:
            while data := await client_in.read(65536):
                with self._lock:
                    if heard[0]:
                        self._round_trips += 1
                    reader.feed(data)
                heard[0] = False
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def downstream() -> None:
            while data := await server_in.read(65536):
                heard[0] = True
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        with contextlib.suppress(ConnectionError, asyncio.CancelledError):  # cancelled: the proxy is closing
            await asyncio.gather(upstream(), downstream())
        for writer in (client_out, server_out):
            writer.close()
