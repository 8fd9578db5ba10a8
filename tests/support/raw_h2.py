"""A raw HTTP/2 client over a plain socket, for tests that must write frames a real gRPC
client never would (the native transport's fuzz, compressed flags, resets) and read
exactly what the server answers. Header blocks are written and read with the ``hpack``
package, an implementation independent of the server's."""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 8
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return head + payload


def grpc_message(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message (flag byte, 4-byte length, bytes)."""
    return struct.pack(">BI", int(compressed), len(message)) + message


@dataclass(frozen=True)
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class Answer:
    """What the server sent on one stream: header lists, data, and whether it was reset."""

    headers: list[dict[str, str]] = field(default_factory=list)
    data: bytes = b""
    reset: bool = False
    reset_code: int = -1  # the RST_STREAM's error code

    @property
    def status(self) -> int:
        """The grpc-status of the trailers (the last header list)."""
        return int(self.headers[-1]["grpc-status"])


class RawH2:
    """One HTTP/2 connection: ``send`` frames, ``frames`` until quiet, ``call`` gRPC."""

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buffer = b""
        self.closed = False
        self.next_stream = 1

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def start(self) -> None:
        """The client preface and an empty SETTINGS frame."""
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data: bytes) -> None:
        # The server may have closed first: what it sent before is still read.
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def request_headers(self, path: str = INFER_PATH, **extra: str) -> bytes:
        """A gRPC request's header block, written by this connection's HPACK encoder."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *((name.replace("_", "-"), value) for name, value in extra.items()),
        ]
        return bytes(self.encoder.encode(headers))

    def read_frame(self, timeout: float) -> Frame | None:
        """The next frame, or None once the server closed or ``timeout`` passed quietly."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags, stream_id = struct.unpack(">BBI", self.buffer[3:9])
                    payload = self.buffer[9 : 9 + length]
                    self.buffer = self.buffer[9 + length :]
                    return Frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
            if self.closed:
                return None
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError:  # reset by the server
                chunk = b""
            if not chunk:
                self.closed = True
            self.buffer += chunk

    def frames(self, quiet: float = 0.2) -> list[Frame]:
        """Everything the server sends until it closes or is quiet for ``quiet`` s."""
        found = []
        while (got := self.read_frame(quiet)) is not None:
            found.append(got)
        return found

    def call(self, message: bytes, compressed: bool = False, **headers: str) -> Answer:
        """One unary call: HEADERS, one DATA frame ending the stream, then the answer."""
        stream = self.open(**headers)
        self.send(frame(DATA, END_STREAM, stream, grpc_message(message, compressed)))
        return self.answer(stream)

    def open(self, **headers: str) -> int:
        """Start a call (HEADERS without END_STREAM): its stream id."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.send(frame(HEADERS, END_HEADERS, stream, self.request_headers(**headers)))
        return stream

    def answer(self, stream: int, timeout: float = 10.0) -> Answer:
        """Read until ``stream`` ends (trailers or reset); PINGs are answered."""
        answer = Answer()
        while (got := self.read_frame(timeout)) is not None:
            if got.kind == PING and not got.flags & ACK:
                self.send(frame(PING, ACK, 0, got.payload))
            if got.stream_id != stream:
                continue
            if got.kind == HEADERS:
                decoded = self.decoder.decode(got.payload)
                answer.headers.append({str(name): str(value) for name, value in decoded})
            elif got.kind == DATA:
                answer.data += got.payload
            elif got.kind == RST_STREAM:
                answer.reset = True
                answer.reset_code = int.from_bytes(got.payload[:4], "big")
                return answer
            if got.kind in (HEADERS, DATA) and got.flags & END_STREAM:
                return answer
        raise AssertionError(f"stream {stream} was not answered; the connection ended")
