"""The bounded inflater shared by HTTP's Content-Encoding and gRPC's grpc-encoding:
what ``gzip.decompress`` and ``zlib.decompress`` give, but never more than the limit."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from modelport.codecs import compression
from modelport.codecs.compression import InflatedTooLarge, inflate

DATA = random.Random(1).randbytes(3000) * 400  # 1.2 MB, several output chunks


def packed(data: bytes, encoding: str) -> bytes:
    return gzip.compress(data) if encoding == "gzip" else zlib.compress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_inflates_up_to_the_limit_and_not_a_byte_more(encoding: str) -> None:
    data = packed(DATA, encoding)
    assert inflate(data, encoding, len(DATA)) == DATA
    assert inflate(data, encoding, 10 * len(DATA)) == DATA
    with pytest.raises(InflatedTooLarge) as caught:
        inflate(data, encoding, len(DATA) - 1)
    assert caught.value.limit == len(DATA) - 1
    assert inflate(packed(b"", encoding), encoding, 1024) == b""


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_stops_at_the_limit_without_inflating_the_rest(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bomb: the output asked of zlib never adds up to more than the limit + 1."""
    asked: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, wbits: int) -> None:
            self.inner = real(wbits)

        def decompress(self, data: bytes, max_length: int) -> bytes:
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(compression.zlib, "decompressobj", Counting)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()  # 64 MiB
    limit = 3 * compression.CHUNK_BYTES + 5
    with pytest.raises(InflatedTooLarge):
        inflate(bomb, encoding, limit)
    assert sum(asked) == limit + 1
    assert max(asked) <= compression.CHUNK_BYTES


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_data_that_is_not_whole_is_a_value_error(encoding: str) -> None:
    data = packed(DATA, encoding)
    for broken in (b"", b"plain text", data[: len(data) // 2], data[:-2]):
        with pytest.raises(ValueError) as caught:
            inflate(broken, encoding, 10 * len(DATA))
        assert not isinstance(caught.value, InflatedTooLarge)
        assert encoding in str(caught.value)
    with pytest.raises(ValueError, match="brotli"):
        inflate(data, "brotli", 10 * len(DATA))


def test_as_the_standard_library_after_the_end() -> None:
    """gzip members one after another (zero padding between) make one body, as
    gzip.decompress has it; bytes after a deflate stream are ignored, as by
    zlib.decompress; anything else after a gzip member is not gzip."""
    members = gzip.compress(b"ab") + b"\x00\x00" + gzip.compress(b"cd") + b"\x00"
    assert inflate(members, "gzip", 4) == gzip.decompress(members) == b"abcd"
    with pytest.raises(InflatedTooLarge):
        inflate(members, "gzip", 3)
    trailing = zlib.compress(b"ab") + b"junk"
    assert inflate(trailing, "deflate", 2) == zlib.decompress(trailing) == b"ab"
    with pytest.raises(ValueError):
        inflate(gzip.compress(b"ab") + b"junk", "gzip", 1024)
