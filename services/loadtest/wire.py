"""What goes over a stream connection: the address, the socket, the request, and an
incremental parser of the answer: status line, headers, a chunked or plain body, and the SSE
frames in it, fed whatever pieces the socket gives."""

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

TOKEN_SECONDS = 3600
# Linux's IP_BIND_ADDRESS_NO_PORT (named by Python from 3.12): a socket bound to an address
# gets its port at connect(), where the port need only be free towards that one target.
BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_HEAD = 64 * 1024  # bytes of status line and headers
MAX_LINE = 1024 * 1024  # bytes of one SSE line (a grade is a few hundred)
HEAD, CHUNK_SIZE, CHUNK, CHUNK_END, PLAIN, DONE = range(6)


def stream_request(
    host: str, path: str, student_id: str, token: str, last_event_id: str | None = None
) -> bytes:
    """GET <path>/notifications/stream/<id>?token=<jwt>, HTTP/1.1."""
    lines = [
        f"GET {path}/notifications/stream/{student_id}?token={token} HTTP/1.1",
        f"Host: {host}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Target(NamedTuple):
    host: str
    port: int
    path: str
    ssl: ssl.SSLContext | None
    netloc: str


def target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    secure = parts.scheme == "https"
    context = ssl.create_default_context() if secure else None
    port = parts.port or (443 if secure else 80)
    return Target(parts.hostname, port, parts.path.rstrip("/"), context, parts.netloc)


def family_of(source: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(source).version == 6 else socket.AF_INET


def address_of(where: Target, source: str) -> tuple[str, int]:
    """The target's address in the source's family, resolved once rather than per stream."""
    try:
        found = socket.getaddrinfo(where.host, where.port, family_of(source), socket.SOCK_STREAM)
    except socket.gaierror as error:
        message = f"gradecast loadtest: no address of {where.host} for {source}: {error}"
        raise SystemExit(message) from None
    host, port = found[0][4][:2]
    return str(host), int(port)


async def connected_socket(source: str, address: tuple[str, int]) -> socket.socket:
    """A socket connected from the local address `source` to `address`."""
    sock = socket.socket(family_of(source), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


class ProtocolError(Exception):
    pass


@dataclass(slots=True)
class Frame:
    """One SSE block: what its fields said (None: absent)."""

    id: bytes | None
    event: bytes | None
    data: bytes | None
    retry: int | None


BLANK = Frame(None, None, None, None)


class StreamParser:
    """feed() takes bytes as they come and returns the frames they complete. `status` is
    the answer's status code once the head has arrived (0 before); `ended` says the body is
    complete. Comments (`: keepalive`) are counted, not returned."""

    __slots__ = ("state", "status", "buffer", "remaining", "text", "comments", "frame")

    def __init__(self) -> None:
        self.state = HEAD
        self.status = 0
        self.buffer = b""  # unparsed head or chunk-size bytes
        self.remaining = 0  # bytes left in this chunk, or of a Content-Length body (-1: to EOF)
        self.text = b""  # body bytes after the last complete SSE line
        self.comments = 0
        self.frame = Frame(None, None, None, None)  # the block being read

    @property
    def ended(self) -> bool:
        return self.state == DONE

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self.buffer + data if self.buffer else data
        pos, size = 0, len(buffer)
        while pos < size:
            state = self.state
            if state == CHUNK or state == PLAIN:
                take = size - pos if self.remaining < 0 else min(self.remaining, size - pos)
                self.body(buffer[pos : pos + take], frames)
                pos += take
                if self.remaining > 0:
                    self.remaining -= take
                    if self.remaining == 0:
                        self.state = CHUNK_END if state == CHUNK else DONE
            elif state == CHUNK_SIZE:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                try:
                    length = int(buffer[pos:end].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                pos = end + 2
                self.remaining = length
                self.state = CHUNK if length > 0 else DONE
            elif state == CHUNK_END:
                if size - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self.state = CHUNK_SIZE
            elif state == HEAD:
                end = buffer.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        raise ProtocolError("response head too long")
                    break
                self.head(buffer[pos:end])
                pos = end + 4
            else:  # DONE: whatever follows is not ours
                pos = size
        self.buffer = buffer[pos:]
        return frames

    def head(self, head: bytes) -> None:
        status_line, *header_lines = head.split(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line[:80]!r}")
        self.status = int(parts[1])
        chunked, length = False, -1
        for line in header_lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length" and value.strip().isdigit():
                length = int(value)
        if chunked:
            self.state = CHUNK_SIZE
        else:
            self.state, self.remaining = (PLAIN, length) if length != 0 else (DONE, 0)

    def body(self, piece: bytes, frames: list[Frame]) -> None:
        text = self.text + piece if self.text else piece
        start = 0
        frame = self.frame
        while (end := text.find(b"\n", start)) >= 0:
            line = text[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if frame != BLANK:
                    frames.append(frame)
                    frame = self.frame = Frame(None, None, None, None)
                continue
            if line[0] == 58:  # b":", a comment
                self.comments += 1
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                frame.data = value if frame.data is None else frame.data + b"\n" + value
            elif name == b"id":
                frame.id = value
            elif name == b"event":
                frame.event = value
            elif name == b"retry" and value.isdigit():
                frame.retry = int(value)
        self.text = text[start:]
        if len(self.text) > MAX_LINE:
            raise ProtocolError("SSE line too long")
