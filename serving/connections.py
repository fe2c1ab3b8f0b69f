"""Connections that cannot be held open for free: a request's headers must arrive within a time limit.

uvicorn bounds the wait between two requests of a kept-alive connection, but not the wait for a request's
headers: a client that connects and sends nothing, or half a request line, holds its connection (a file
descriptor, a protocol object) for as long as it likes, and a few thousand of them exhaust the server. The
app never sees such a request, so no middleware can help. :class:`HeaderTimeoutHttpTools` is uvicorn's httptools
protocol (llhttp, a C parser: the pure-Python h11 one cost about as much as the rest of a trivial request) with
that limit: a connection still waiting for a request's complete headers ``timeout_s`` after it opened (or after
the first bytes of its next request came) is closed. Bodies are bounded by :class:`~tailorrt.serving.app.BodyGuard`.
:class:`HeaderTimeoutConfig` is uvicorn's config with that protocol and limit (importable by name, so that the
workers of ``tailor serve --workers N`` get it too).

Also here, light to import (the CLI checks before loading anything): :func:`check_free`, which refuses a port
that another process holds.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tailorrt.errors import ConfigError


class HeaderTimeoutHttpTools(HttpToolsProtocol):
    """A message is *in its headers* from its first byte (``on_message_begin``) until ``on_headers_complete``; so is
    a connection that has sent nothing yet. One that stays so for the config's ``header_timeout_s`` is closed."""

    def __init__(self, config: uvicorn.Config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float = config.header_timeout_s  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers:
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self.transport.close()


class HeaderTimeoutConfig(uvicorn.Config):
    """uvicorn's config, with :class:`HeaderTimeoutHttpTools` and its limit."""

    def __init__(self, app, *, header_timeout_s: float, **kwargs) -> None:
        super().__init__(app, http=HeaderTimeoutHttpTools, **kwargs)
        self.header_timeout_s = header_timeout_s


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_free(host: str, port: int) -> None:
    """Refuse a port that another process holds (gRPC would otherwise share it with SO_REUSEPORT or fail late)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen for gRPC on {address(host, port)}: {e.strerror}; choose another "
                              "--grpc-port, or --no-grpc") from None
