"""Bounded inflation of gzip and deflate data, for every transport that accepts it (an
HTTP ``Content-Encoding``, a gRPC ``grpc-encoding``).

A few hundred kilobytes of deflate can hold gigabytes of zeros, so data is inflated a
chunk at a time and refused as soon as its output would pass the caller's limit: what
is held never exceeds the limit by more than one byte, whatever the data says. The
caller words the refusal (it knows the setting that sets the limit), and decides where
the work runs: inflating up to the limit is CPU work that should not hold an event loop.
"""

from __future__ import annotations

import zlib

# zlib's window bits per encoding: a gzip header and trailer (CRC, size), or a zlib one
# (RFC 1950, what HTTP and gRPC call "deflate").
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ENCODINGS = tuple(WBITS)
CHUNK_BYTES = 256 * 1024  # output per zlib call: the most held besides what is kept


class InflatedTooLarge(ValueError):
    """Data that inflates past the limit; ``limit`` is the limit it passed."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` inflated by ``encoding`` (``gzip`` or ``deflate``): at most ``limit``
    bytes, :class:`InflatedTooLarge` as soon as the output passes it, ValueError for an
    unknown encoding or data that is not valid or cut short.

    As ``gzip.decompress`` and ``zlib.decompress`` do: gzip data may be several members
    one after the other (zero bytes between or after them are padding), and bytes after
    the end of a deflate stream are ignored.
    """
    wbits = WBITS.get(encoding)
    if wbits is None:
        raise ValueError(f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    parts: list[bytes] = []
    size = 0
    pending = data
    while True:
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            try:
                # Never more than one byte past the limit: enough to know it is passed.
                out = inflater.decompress(pending, min(CHUNK_BYTES, limit + 1 - size))
            except zlib.error as exc:
                raise ValueError(f"not valid {encoding} data: {exc}") from None
            size += len(out)
            if size > limit:
                raise InflatedTooLarge(f"{encoding} data inflates past {limit} bytes", limit)
            pending = inflater.unconsumed_tail
            if not out and not pending:
                break  # every byte read and nothing more comes out: the stream is cut
            if out:
                parts.append(out)
        if not inflater.eof:
            raise ValueError(f"{encoding} data is cut short (no end-of-stream marker)")
        if encoding != "gzip":
            break
        pending = inflater.unused_data.lstrip(b"\x00")
        if not pending:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)
