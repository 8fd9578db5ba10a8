"""The native transport's HPACK (``api/grpc/hpack_codec.py``) against the ``hpack``
package, an independent implementation: what hpack's Encoder writes our HeaderDecoder
reads back, block after block on one connection's state (dynamic table, evictions,
size updates, Huffman on and off), the remembered blocks never answer for a table that
has changed, bad blocks are HpackError, and what we encode hpack's Decoder reads."""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import pytest
from hpack import Decoder, Encoder
from hpack.hpack import decode_integer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.api.grpc.hpack_codec import (
    HeaderDecoder,
    HpackError,
    encode_integer,
    encode_literal,
    encode_status,
)

pytestmark = pytest.mark.timeout(60)

Header = tuple[bytes, bytes]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

# Fields a gRPC client sends (static-table names and values among them), so blocks mix
# static, dynamic and literal fields.
COMMON: list[Header] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"127.0.0.1:8001"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"100m"),
    (b"user-agent", b"grpc-python/1.0"),
    (b"x-long", b"v" * 300),  # > 127 bytes: a multi-byte length
]
random_bytes = st.binary(max_size=40) | st.binary(min_size=120, max_size=400)
random_header = st.tuples(random_bytes, random_bytes)


@st.composite
def steps(draw: Any) -> list[tuple[str, Any]]:
    """A connection's life: header blocks from a pool (so fields repeat and the dynamic
    table fills and evicts) and changes of the encoder's table size between them."""
    pool = COMMON + draw(st.lists(random_header, min_size=1, max_size=8))
    header = st.sampled_from(pool) | random_header
    block = st.tuples(
        st.just("block"),
        st.tuples(st.lists(st.tuples(header, st.booleans()), max_size=12), st.booleans()),
    )
    resize = st.tuples(st.just("resize"), st.lists(st.integers(0, 4096), min_size=1, max_size=3))
    return draw(st.lists(block | resize, min_size=1, max_size=25))


@PROPERTY
@given(steps())
def test_decodes_what_hpack_encodes_block_after_block(life: list[tuple[str, Any]]) -> None:
    """Each block decodes to the encoder's input; then an earlier block sent again
    decodes as hpack's own Decoder reads it under today's table (never a remembered
    answer from an older table)."""
    encoder, ours, reference = Encoder(), HeaderDecoder(), Decoder()
    sent: list[bytes] = []
    for kind, arg in life:
        if kind == "resize":
            for size in arg:  # several changes: the block carries each (RFC 7541 4.2)
                # hpack's Encoder sends its pending size changes only if the *last*
                # assignment changed the size: setting the size it already has drops
                # the changes before it unsent, and its peers' tables drift from its
                # own (its bug, not the decoder's). A real encoder never does that.
                if size != encoder.header_table_size:
                    encoder.header_table_size = size
            continue
        fields, huffman = arg
        headers = [(name, value) for (name, value), _ in fields]
        # A sensitive field is a literal "never indexed": it stays out of the table.
        block = encoder.encode(
            [(name, value, sensitive) for (name, value), sensitive in fields], huffman=huffman
        )
        assert ours.decode(block) == headers
        assert [tuple(h) for h in reference.decode(block, raw=True)] == headers
        sent.append(block)
        for old in sent[-4:]:
            _replay(ours, reference, old)


def _replay(ours: HeaderDecoder, reference: Decoder, block: bytes) -> None:
    """Send ``block`` again if it leaves the table as it is (else the encoder's table
    would no longer match): both decoders must read it alike."""
    trial = copy.deepcopy(reference)
    before = (list(trial.header_table.dynamic_entries), trial.header_table_size)
    try:
        expected = [tuple(h) for h in trial.decode(block, raw=True)]
    except Exception:
        return  # refers to entries evicted since: a connection error, not replayed
    if (list(trial.header_table.dynamic_entries), trial.header_table_size) != before:
        return
    assert ours.decode(block) == expected


def test_a_remembered_block_is_not_reused_after_the_table_changes() -> None:
    encoder, decoder = Encoder(), HeaderDecoder()
    assert decoder.decode(encoder.encode([(b"x-a", b"1")])) == [(b"x-a", b"1")]
    again = encoder.encode([(b"x-a", b"1")])
    assert again == b"\xbe"  # indexed: dynamic entry 62
    assert decoder.decode(again) == [(b"x-a", b"1")]
    assert decoder.decode(again) == [(b"x-a", b"1")]  # the remembered answer

    decoder.decode(encoder.encode([(b"x-b", b"2")]))  # now entry 62 is x-b
    assert decoder.decode(b"\xbe") == [(b"x-b", b"2")]
    assert decoder.decode(b"\xbf") == [(b"x-a", b"1")]

    decoder.decode(b"\x20")  # a size update to 0 empties the table
    with pytest.raises(HpackError, match="index 62"):
        decoder.decode(b"\xbe")


def test_an_entry_larger_than_the_table_empties_it() -> None:
    encoder, decoder = Encoder(), HeaderDecoder()
    decoder.decode(encoder.encode([(b"x-a", b"1")]))
    huge = (b"x-huge", b"h" * 5000)
    assert decoder.decode(encoder.encode([huge])) == [huge]
    assert decoder.table == deque() and decoder.size == 0
    with pytest.raises(HpackError):
        decoder.decode(b"\xbe")


BAD_BLOCKS = {
    "index 0": (b"\x80", "index 0"),
    "index past the static table, dynamic empty": (b"\xbe", "index 62"),
    "index far past the table": (encode_integer(5000, 7, 0x80), "index 5000"),
    "literal on a name index past the table": (b"\x0f\x30\x01a", "index 63"),
    "integer cut off": (b"\xff", "inside an integer"),
    "integer continuation cut off": (b"\xff\x80", "inside an integer"),
    "integer too long": (b"\xff" + b"\xff" * 6 + b"\x01", "too long"),
    "no string": (b"\x40", "before a string"),
    "name cut off": (b"\x40\x05ab", "past the end"),
    "value missing": (b"\x00\x01a", "before a string"),
    "value cut off": (b"\x00\x01a\x7f\x10abc", "past the end"),
    "bad huffman": (b"\x00\x01a\x81\xff", "Huffman"),
    "size update over the limit": (encode_integer(4097, 5, 0x20), "over the allowed 4096"),
    "size update after a field": (b"\x82\x20", "after a header field"),
}


@pytest.mark.parametrize("name", list(BAD_BLOCKS))
def test_bad_blocks_are_hpack_errors(name: str) -> None:
    block, message = BAD_BLOCKS[name]
    with pytest.raises(HpackError, match=message):
        HeaderDecoder().decode(block)


@PROPERTY
@given(random_bytes, random_bytes)
def test_encode_literal_reads_back_with_hpack(name: bytes, value: bytes) -> None:
    decoder = Decoder()
    block = encode_literal(name, value) + encode_literal(b"grpc-status", b"0")
    assert [tuple(h) for h in decoder.decode(block, raw=True)] == [
        (name, value),
        (b"grpc-status", b"0"),
    ]
    assert list(decoder.header_table.dynamic_entries) == []  # "without indexing"


@PROPERTY
@given(st.integers(0, 2**28), st.integers(1, 8), st.data())
def test_encode_integer_reads_back_with_hpack(value: int, prefix: int, data: Any) -> None:
    flags = data.draw(st.integers(0, 255)) & ~((1 << prefix) - 1) & 0xFF
    encoded = encode_integer(value, prefix, flags)
    assert decode_integer(encoded, prefix) == (value, len(encoded))
    assert encoded[0] & ~((1 << prefix) - 1) & 0xFF == flags  # the flags are kept


@pytest.mark.parametrize("status", [200, 400, 404, 500, 503])
def test_encode_status_reads_back_with_hpack(status: int) -> None:
    headers = Decoder().decode(encode_status(status), raw=True)
    assert [tuple(h) for h in headers] == [(b":status", str(status).encode())]


def test_a_size_change_back_to_a_larger_table_keeps_large_entries() -> None:
    """The case hypothesis once reported as our bug: the table shrinks to 100 bytes, grows
    back to 4,096, and a 200-byte entry added afterwards is indexed by the next block."""
    encoder, decoder = Encoder(), HeaderDecoder()
    encoder.header_table_size = 100
    assert decoder.decode(encoder.encode([(b"a", b"1")])) == [(b"a", b"1")]
    encoder.header_table_size = 4096
    big = (b"x", b"v" * 200)
    assert decoder.decode(encoder.encode([big])) == [big]
    block = encoder.encode([big])
    assert block == b"\xbe"  # index 62: the newest dynamic entry
    assert decoder.decode(block) == [big]
