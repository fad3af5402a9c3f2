"""The HTTP client webhooks are POSTed with: each POST under one overall deadline, and all cut short at stop.

httpx's timeouts apply to each read and write, so a receiver that trickles its answer a byte at a time would hold
a thread for ever. Here every socket operation of a POST waits at most until that POST's deadline (set per thread
by `deadline`), in slices short enough to notice `stopping`: a POST ends within its timeout, or at once at stop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore2
import httpx2

SLICE_S = 0.25
"""The longest one socket wait lasts before the deadline and `stopping` are looked at again."""


class Deadlines:
    """The deadline of the POST each thread is making, and the flag that cuts every one short."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        self._local.until = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.until = None

    def bounded(self) -> bool:
        """This thread is making a POST under a deadline (outside one, httpx's own timeouts apply as they are)."""
        return getattr(self._local, "until", None) is not None

    def left_s(self, timeout: float | None) -> float:
        """How long this POST may still wait (at most `timeout`); raises TimeoutError when its deadline passed,
        or at stop. Only when `bounded`."""
        left_s = self._local.until - time.monotonic()
        if left_s <= 0 or self.stopping.is_set():
            raise TimeoutError("deadline passed")
        return left_s if timeout is None else min(left_s, timeout)


class _Stream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream, deadlines: Deadlines) -> None:
        self.inner = inner
        self.deadlines = deadlines

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self.deadlines.bounded():
            return self.inner.read(max_bytes, timeout)
        while True:
            try:
                wait_s = min(self.deadlines.left_s(timeout), SLICE_S)
            except TimeoutError as error:
                raise httpcore2.ReadTimeout(str(error)) from None
            try:
                return self.inner.read(max_bytes, wait_s)
            except httpcore2.ReadTimeout:
                continue  # one slice ran out; the deadline is looked at again

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not self.deadlines.bounded():
            return self.inner.write(buffer, timeout)
        try:
            left_s = self.deadlines.left_s(timeout)
        except TimeoutError as error:
            raise httpcore2.WriteTimeout(str(error)) from None
        self.inner.write(buffer, left_s)  # a body is one event: small, so written at once or not in time

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        if not self.deadlines.bounded():
            return _Stream(self.inner.start_tls(ssl_context, server_hostname, timeout), self.deadlines)
        try:
            left_s = self.deadlines.left_s(timeout)
        except TimeoutError as error:
            raise httpcore2.ConnectTimeout(str(error)) from None
        inner = self.inner.start_tls(ssl_context, server_hostname, left_s)
        return _Stream(inner, self.deadlines)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore2.SyncBackend):
    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        if not self.deadlines.bounded():
            return _Stream(super().connect_tcp(host, port, timeout, local_address, socket_options), self.deadlines)
        try:
            left_s = self.deadlines.left_s(timeout)
        except TimeoutError as error:
            raise httpcore2.ConnectTimeout(str(error)) from None
        inner = super().connect_tcp(host, port, left_s, local_address, socket_options)
        return _Stream(inner, self.deadlines)


def client(max_connections: int, deadlines: Deadlines) -> httpx2.Client:
    """A client whose connections all obey `deadlines`; redirects are not followed (a moved receiver is the
    webhook row's to change)."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = httpx2.HTTPTransport(limits=limits)
    # httpx does not pass a network backend through; its pool takes one (httpcore's documented extension point).
    transport._pool._network_backend = _Backend(deadlines)  # type: ignore[attr-defined]  # noqa: SLF001
    return httpx2.Client(transport=transport, follow_redirects=False)
