"""A raw-socket WebSocket client for hostile tests: it sends whatever frames it is told to
(fragments, bad close codes, pings, lying lengths, compressed messages) and reads the server's
frames without any of a real client's checks."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
          length: int | None = None, mask: bool = True) -> bytes:  # fmt: skip
    """One client frame; `length` lies about the payload length when given."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 2**16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    body = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        if len(payload) < 4096
        else (_xor(payload, key))
    )
    return head + key + body


def _xor(payload: bytes, key: bytes) -> bytes:
    import numpy as np

    data = np.frombuffer(payload, np.uint8)
    keys = np.resize(np.frombuffer(key, np.uint8), len(data))
    return (data ^ keys).tobytes()


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack(">H", code) + reason)


class RawWS:
    """A connected, upgraded socket. `extra_headers` are added to the upgrade request."""

    def __init__(self, port: int, path: str = "/stream", extra_headers: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {self.buf!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.response = head.decode("latin-1")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the server's next frame (servers do not mask)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def close_code(self, timeout: float = 30.0) -> tuple[int, str]:
        """Read until the server's close frame: (code, reason); (1006, "") when the TCP
        connection ends without one."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                op, payload = self.recv_frame()
                if op == CLOSE:
                    if len(payload) < 2:
                        return 1005, ""
                    return struct.unpack(">H", payload[:2])[0], payload[2:].decode(
                        "utf-8", "replace"
                    )
        except (EOFError, ConnectionError):
            return 1006, ""
        raise TimeoutError("no close frame")

    def close(self) -> None:
        self.sock.close()
