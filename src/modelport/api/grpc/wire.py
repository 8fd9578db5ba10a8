"""The gRPC side of the wire, over HTTP/2 (PROTOCOL-HTTP2 of grpc/grpc), for the native
transport (``native.py``): a request is HEADERS (``:path`` = ``/package.Service/Method``,
``content-type: application/grpc``, ``grpc-timeout``, ``grpc-encoding``, metadata) then
length-prefixed messages, compressed or not; the answer is HEADERS, messages, and
trailers carrying ``grpc-status`` and ``grpc-message``, or trailers alone for an error
before any message. Here: reading a call's header block, inflating a compressed
message, and writing the header blocks of an answer.
"""

from __future__ import annotations

import base64
import time
from typing import NamedTuple

import grpc

from modelport.api.grpc.hpack_codec import encode_literal, encode_status
from modelport.codecs.compression import InflatedTooLarge
from modelport.codecs.compression import inflate as codecs_inflate

Metadata = tuple[tuple[str, str | bytes], ...]
BARE_HEAD = encode_status(200) + encode_literal(b"content-type", b"application/grpc")
HEAD = BARE_HEAD + encode_literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
OK_TRAILERS = encode_literal(b"grpc-status", b"0")
RESERVED = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"}
)
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class CallHead(NamedTuple):
    """What a call's header block says, read once per distinct block."""

    path: str
    metadata: Metadata
    timeout: str
    encoding: str
    problem: tuple[grpc.StatusCode, str] | None


def read_head(headers: list[tuple[bytes, bytes]]) -> CallHead:
    path = method = content_type = timeout = encoding = ""
    metadata: list[tuple[str, str | bytes]] = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        if name[:1] == ":":
            if name == ":path":
                path = raw_value.decode("latin-1")
            elif name == ":method":
                method = raw_value.decode("latin-1")
            continue
        if name in RESERVED:
            if name == "content-type":
                content_type = raw_value.decode("latin-1")
            elif name == "grpc-timeout":
                timeout = raw_value.decode("latin-1")
            elif name == "grpc-encoding":
                encoding = raw_value.decode("latin-1")
            continue
        if name.endswith("-bin"):
            try:
                metadata.append((name, base64.b64decode(raw_value + b"==")))
            except ValueError:
                metadata.append((name, b""))  # undecodable: seen as empty, as by grpc
        else:
            metadata.append((name, raw_value.decode("latin-1")))
    problem = None
    if method != "POST":
        problem = (grpc.StatusCode.UNIMPLEMENTED, f"gRPC calls are POST, not {method}")
    elif not content_type.startswith("application/grpc"):
        problem = (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"content-type {content_type!r} is not application/grpc",
        )
    elif encoding not in ("", "identity", "gzip", "deflate"):
        problem = (
            grpc.StatusCode.UNIMPLEMENTED,
            f"grpc-encoding {encoding!r} is not supported (identity, gzip, deflate)",
        )
    return CallHead(path, tuple(metadata), timeout, encoding, problem)


def inflate(message: bytes, encoding: str, limit: int) -> bytes:
    """A compressed message (flag 1), decompressed by its call's ``grpc-encoding``; at
    most ``limit`` bytes (InflatedTooLarge past it), ValueError if it is not whole."""
    if encoding in ("", "identity"):
        raise ValueError("a compressed message without grpc-encoding")
    try:
        return codecs_inflate(message, encoding, limit)
    except InflatedTooLarge:
        raise InflatedTooLarge(
            f"the decompressed message is larger than max ({limit}; grpc_max_message_bytes)",
            limit,
        ) from None
    except ValueError as exc:
        raise ValueError(f"the compressed message does not inflate: {exc}") from None


def metadata_block(metadata: Metadata) -> bytes:
    """Metadata as header fields (trailers): ``-bin`` values base64-encoded."""
    fields = []
    for key, value in metadata:
        if isinstance(value, bytes):
            value = base64.b64encode(value).rstrip(b"=").decode()
        fields.append(encode_literal(key.lower().encode("latin-1"), value.encode("latin-1")))
    return b"".join(fields)


def percent_encoded(text: str) -> bytes:
    """grpc-message: UTF-8, with '%' and bytes outside printable ASCII percent-encoded."""
    return b"".join(
        bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
        for byte in text.encode("utf-8")
    )


def deadline_of(value: str) -> float | None:
    """When a ``grpc-timeout`` value runs out (``time.monotonic``); None if malformed."""
    unit = TIMEOUT_UNITS.get(value[-1:]) if value else None
    digits = value[:-1]
    # At most 8 ASCII digits (PROTOCOL-HTTP2); str.isdigit alone takes '²' and any length.
    if unit is None or not (digits.isascii() and digits.isdigit()) or len(digits) > 8:
        return None
    return time.monotonic() + int(digits) * unit
