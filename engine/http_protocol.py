"""uvicorn's HTTP protocol with TCP_NODELAY on every connection.

With several workers uvicorn binds the listening socket itself with `proto=0`, and asyncio then
leaves Nagle's algorithm on for accepted connections: each keep-alive response can wait ~40 ms for
the client's delayed ACK. Setting TCP_NODELAY when the connection is made removes that stall.
"""

from __future__ import annotations

import asyncio
import socket

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's fallback
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseProtocol  # type: ignore[assignment]


class NoDelayHttpProtocol(_BaseProtocol):  # type: ignore[misc, valid-type]
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)
