"""Where a tensor lies in shared memory: the parameters Triton's clients send in place of
an input's data or an output's answer, read by the codecs, resolved by a
:class:`Regions` (the server's registered regions, ``core/shared_memory.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelport.codecs.v2_binary import encode_tensor
from modelport.errors import InvalidInput
from modelport.tensors import Tensor

# The parameters a tensor carries in place of its data (Triton's names).
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
SHARED_MEMORY_PARAMETERS = frozenset((REGION, BYTE_SIZE, OFFSET))


@dataclass(frozen=True, slots=True)
class RegionSlice:
    """Where a tensor lies: ``byte_size`` bytes at ``offset`` within a named region."""

    region: str
    offset: int
    byte_size: int


class Regions(Protocol):
    """The server's registered regions, as the codecs use them."""

    def read(self, where: RegionSlice) -> bytes:
        """A copy of the bytes at ``where``; an error naming the region when it cannot."""
        ...

    def write(self, where: RegionSlice, data: bytes) -> None:
        """Put ``data`` at ``where``; an error when it does not fit."""
        ...


def no_regions(tensor: str) -> InvalidInput:
    return InvalidInput(
        f"'{tensor}' names a shared memory region, which this endpoint does not read; "
        "send the tensor in the request"
    )


def region_slice(parameters: Mapping[str, Any], tensor: str) -> RegionSlice | None:
    """The region an input's or requested output's parameters name, or None when they
    name none; InvalidInput when they name one without a usable size."""
    region = parameters.get(REGION)
    if region is None:
        return None
    size, offset = parameters.get(BYTE_SIZE), parameters.get(OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"'{tensor}': {REGION} must be a region's name")
    if not isinstance(size, int) or not _is_count(size) or not _is_count(offset):
        raise InvalidInput(
            f"'{tensor}': {BYTE_SIZE} (and {OFFSET}, when given) must be non-negative "
            "integers when it names a shared memory region"
        )
    return RegionSlice(region, int(offset), int(size))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def placed_in_region(tensor: Tensor, where: RegionSlice, regions: Regions | None) -> dict[str, Any]:
    """Write an output into the region its request named; the parameters that answer
    for it in place of its data (the region and the bytes written, as Triton answers)."""
    if regions is None:
        raise no_regions(tensor.name)
    raw = encode_tensor(tensor.data, tensor.datatype)
    regions.write(where, raw)
    placed: dict[str, Any] = {REGION: where.region, BYTE_SIZE: len(raw)}
    if where.offset:
        placed[OFFSET] = where.offset
    return placed
