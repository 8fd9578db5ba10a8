"""HPACK (RFC 7541), the header compression of HTTP/2, for the native gRPC transport.

Decoding keeps the connection's dynamic table and remembers what each header block
decoded to while the table stays as it is: a client sending the same call again sends
the same few bytes of indexed fields (every gRPC client does, once its first call has
filled the table), and those decode by one dictionary lookup. A block that changes the
table (a literal added to it, a size update) is decoded field by field and forgets
what was remembered. The static table and the Huffman code come from the ``hpack``
package; the rest is here because ``hpack``'s own decoder costs ~70 us a block, more
than the whole call should.

Encoding never uses the dynamic table (every field is a literal "without indexing"),
so the answers need no state and the fixed ones are built once.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]

STATIC: tuple[Header, ...] = tuple(HeaderTable.STATIC_TABLE)
STATIC_COUNT = len(STATIC)
ENTRY_OVERHEAD = 32  # bytes an entry counts for beside its name and value (RFC 7541 4.1)
DEFAULT_TABLE_SIZE = 4096
REMEMBERED_BLOCKS = 256


class HeaderList(list[Header]):
    """A decoded block. The same block decodes to the same list while the table stays
    as it is, so what a reader derives from it may be kept on it (``head``)."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.head: Any = None


class HpackError(ValueError):
    """A header block that cannot be decoded: a COMPRESSION_ERROR of the connection."""


class HeaderDecoder:
    """One connection's decoding side: its dynamic table and remembered blocks."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_allowed = max_table_size  # what our SETTINGS_HEADER_TABLE_SIZE allows
        self.max_size = max_table_size  # what the encoder chose, at most max_allowed
        self.size = 0
        self.table: deque[Header] = deque()  # newest first
        self.known: dict[bytes, HeaderList] = {}

    def decode(self, block: bytes) -> HeaderList:
        """The header list of ``block`` (names and values as bytes), in order."""
        known = self.known.get(block)
        if known is not None:
            return known
        changed, headers = self._decode(block)
        if changed:
            self.known.clear()
        elif len(self.known) < REMEMBERED_BLOCKS:
            self.known[block] = headers
        return headers

    def _decode(self, block: bytes) -> tuple[bool, HeaderList]:
        headers = HeaderList()
        changed = False
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                headers.append(self._entry(index))
            elif first & 0x40:  # literal, added to the table
                name, value, pos = self._literal(block, pos, 6)
                headers.append((name, value))
                self._add(name, value)
                changed = True
            elif first & 0x20:  # table size update
                if headers:
                    raise HpackError("a dynamic table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > self.max_allowed:
                    raise HpackError(f"table size {size} is over the allowed {self.max_allowed}")
                self.max_size = size
                self._evict(0)
                changed = True
            else:  # literal not added (0000) or never to be added (0001)
                name, value, pos = self._literal(block, pos, 4)
                headers.append((name, value))
        return changed, headers

    def _entry(self, index: int) -> Header:
        if 0 < index <= STATIC_COUNT:
            return STATIC[index - 1]
        dynamic = index - STATIC_COUNT - 1
        if index == 0 or dynamic >= len(self.table):
            raise HpackError(f"header index {index} is not in the table")
        return self.table[dynamic]

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.max_size:
            self.table.clear()  # an entry larger than the table empties it (RFC 7541 4.4)
            self.size = 0
            return
        self._evict(size)
        self.table.appendleft((name, value))
        self.size += size

    def _evict(self, room: int) -> None:
        while self.table and self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    try:
        value = block[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        while True:
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
            if shift > 28:
                raise HpackError("an integer of the header block is too long")
    except IndexError:
        raise HpackError("the header block ends inside an integer") from None


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise HpackError("the header block ends before a string")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("a string runs past the end of the header block")
    raw = block[pos:end]
    if not huffman:
        return raw, end
    try:
        return decode_huffman(raw), end
    except Exception as exc:  # hpack raises its own HPACKDecodingError
        raise HpackError(f"bad Huffman string: {exc}") from None


def encode_integer(value: int, prefix: int, flags: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(name: bytes, value: bytes) -> bytes:
    """One field as a literal without indexing, with a new (not indexed) name."""
    return b"".join(
        (b"\x00", encode_integer(len(name), 7), name, encode_integer(len(value), 7), value)
    )


def encode_status(status: int) -> bytes:
    """``:status``: indexed for 200 (static entry 8), else a literal on the name's entry."""
    if status == 200:
        return b"\x88"
    digits = str(status).encode()
    return encode_integer(8, 4) + encode_integer(len(digits), 7) + digits
