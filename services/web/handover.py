"""Long-lived responses that outgrow ASGI. Once a stream's response has started, the app can
take its connection from uvicorn and write to the transport itself; the ASGI call then
returns, and the whole suspended chain of coroutines behind it (server, middleware,
framework, route: about 28 KiB a connection) goes with it."""

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HANDOVER = "gradecast.handover"  # the scope's extension: a weak reference to the protocol


def hand_over(scope: Any, protocol: asyncio.BaseProtocol) -> asyncio.Transport | None:
    """Gives the connection of the request `scope` to `protocol`, for good, after the
    response has started; answers its transport, or None when the client is gone already."""
    reference = scope.get("extensions", {}).get(HANDOVER, {}).get("protocol")
    server = reference() if reference is not None else None
    if not isinstance(server, HandoverProtocol):
        raise RuntimeError("streams need gradecast's server (services.web.server)")
    return server.hand_over(scope, protocol)


class HandoverProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, able to hand its connection over as it does after a
    WebSocket upgrade: uvicorn then forgets it, and the request's later ASGI messages are
    dropped."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # Weak: the scope outlives neither the request nor the connection.
        self.scope["extensions"] = {HANDOVER: {"protocol": weakref.ref(self)}}

    def hand_over(self, scope: Any, protocol: asyncio.BaseProtocol) -> asyncio.Transport | None:
        cycle = self.cycle
        if cycle.scope is not scope:
            raise RuntimeError("another request was pipelined behind a stream")
        if cycle.disconnected or self.transport.is_closing():
            return None
        cycle.disconnected = True
        self.connections.discard(self)
        self._unset_keepalive_if_required()
        self.transport.set_protocol(protocol)
        if self.flow.write_paused:
            protocol.pause_writing()
        self.parser = None  # type: ignore[assignment]  # it refers back here: free both now
        return self.transport
