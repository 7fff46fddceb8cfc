"""A small clamd client (PING, VERSION, INSTREAM) with timeouts on every socket operation.

The PyPI ``clamd`` package has no per-operation timeouts and cannot stream a file in
pieces while it is being read, so vmscan speaks the protocol itself; see clamd(8),
"INSTREAM": chunks prefixed by a 4-byte big-endian length, ended by a zero length.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import struct
from dataclasses import dataclass

from vmscan.errors import VmscanError

log = logging.getLogger(__name__)

#: Largest chunk sent in one INSTREAM frame (clamd accepts any size up to its limits).
CHUNK = 256 * 1024
_MAX_REPLY = 64 * 1024
LIMITS_PREFIX = "Heuristics.Limits.Exceeded"


class ClamdUnavailable(VmscanError):
    """clamd is missing, will not start, or does not answer: the antivirus check fails."""


class ClamdConnectionError(VmscanError):
    """One conversation with clamd failed (connect, send, receive or timeout)."""


class StreamRefused(ClamdConnectionError):
    """clamd closed the stream while vmscan was still sending (size limit, or clamd died)."""


class Verdict(enum.StrEnum):
    """What clamd said about one stream."""

    CLEAN = "clean"
    FOUND = "found"
    TOO_LARGE = "too_large"
    ERROR = "error"


@dataclass(frozen=True)
class ScanReply:
    """A parsed INSTREAM reply."""

    verdict: Verdict
    signature: str = ""
    raw: str = ""


def parse_reply(raw: str) -> ScanReply:
    """Turn ``stream: Eicar FOUND`` and friends into a :class:`ScanReply`."""
    text = raw.strip("\0\r\n ")
    body = text.split(": ", 1)[1] if text.startswith("stream: ") else text
    if body == "OK":
        return ScanReply(Verdict.CLEAN, raw=text)
    if body.endswith(" FOUND"):
        name = body[: -len(" FOUND")].strip()
        # AlertExceedsMax: clamd could scan only part of the content. Never "clean".
        if name.startswith(LIMITS_PREFIX):
            return ScanReply(Verdict.TOO_LARGE, name, text)
        return ScanReply(Verdict.FOUND, name, text)
    if "size limit exceeded" in body:
        return ScanReply(Verdict.TOO_LARGE, raw=text)
    return ScanReply(Verdict.ERROR, raw=text)


def _parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[len("unix:") :]
    if address.startswith("tcp:"):
        host, _, port = address[len("tcp:") :].rpartition(":")
        if not host or not port.isdigit():
            raise ClamdUnavailable(f"bad clamd address {address!r} (want tcp:HOST:PORT)")
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ClamdUnavailable(f"bad clamd address {address!r} (want unix:/PATH or tcp:HOST:PORT)")


class InStream:
    """One INSTREAM conversation: :meth:`write` pieces, then :meth:`finish` for the reply."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.bytes_sent = 0
        self._refused = False

    def write(self, data: bytes) -> None:
        """Send *data*; when clamd stops reading (size limit) the rest is dropped."""
        if self._refused:
            return
        view = memoryview(data)
        try:
            for i in range(0, len(view), CHUNK):
                part = view[i : i + CHUNK]
                self._sock.sendall(struct.pack("!L", len(part)) + part.tobytes())
                self.bytes_sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            # clamd closes the stream past StreamMaxLength; its reply says why.
            self._refused = True
        except OSError as e:
            self.close()
            raise ClamdConnectionError(f"sending to clamd: {e}") from e

    def finish(self) -> ScanReply:
        """End the stream and wait for clamd's verdict."""
        try:
            if not self._refused:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._sock.sendall(struct.pack("!L", 0))
            raw = _recv_reply(self._sock)
        finally:
            self.close()
        if not raw:
            if self._refused:
                raise StreamRefused("clamd stopped reading the stream and sent no reply")
            raise ClamdConnectionError("clamd closed the connection without a reply")
        return parse_reply(raw)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _recv_reply(sock: socket.socket) -> str:
    buf = b""
    try:
        while b"\0" not in buf and len(buf) < _MAX_REPLY:
            got = sock.recv(4096)
            if not got:
                break
            buf += got
    except ConnectionResetError:
        pass
    except OSError as e:
        raise ClamdConnectionError(f"reading clamd's reply: {e}") from e
    return buf.split(b"\0", 1)[0].decode("utf-8", errors="replace")


class ClamdClient:
    """Talks to one clamd; each call opens its own connection (thread-safe)."""

    def __init__(self, address: str, timeout: float = 120.0, connect_timeout: float = 10.0):
        self.address = address
        self.family, self.target = _parse_address(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.target)
        except OSError as e:
            sock.close()
            raise ClamdConnectionError(f"cannot connect to clamd at {self.address}: {e}") from e
        sock.settimeout(self.timeout)
        return sock

    def _command(self, cmd: str) -> str:
        sock = self._connect()
        try:
            sock.sendall(b"z" + cmd.encode() + b"\0")
            return _recv_reply(sock)
        except OSError as e:
            raise ClamdConnectionError(f"clamd {cmd}: {e}") from e
        finally:
            sock.close()

    def ping(self) -> bool:
        """True when clamd answers PONG."""
        try:
            return self._command("PING") == "PONG"
        except ClamdConnectionError:
            return False

    def version(self) -> str:
        """``ClamAV 1.4.6`` or ``ClamAV 1.4.6/27400/Thu Oct ...`` (with a daily database)."""
        return self._command("VERSION").strip()

    def open_stream(self) -> InStream:
        sock = self._connect()
        try:
            sock.sendall(b"zINSTREAM\0")
        except OSError as e:
            sock.close()
            raise ClamdConnectionError(f"clamd INSTREAM: {e}") from e
        return InStream(sock)

    def scan_bytes(self, data: bytes) -> ScanReply:
        """Scan one buffer (convenience for small content)."""
        stream = self.open_stream()
        stream.write(data)
        return stream.finish()
