"""The registered regions themselves (core/shared_memory.py), on a folder standing in
for /dev/shm: keys that are not shm names, offsets inside a region, writes that do not
fit, unregistering."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.codecs.regions import RegionSlice, region_slice
from modelport.core.shared_memory import SystemSharedMemory
from modelport.errors import Conflict, InvalidInput, ModelNotFound


@pytest.fixture
def memory(tmp_path: Path) -> SystemSharedMemory:
    (tmp_path / "data").write_bytes(bytes(range(64)))
    return SystemSharedMemory(root=tmp_path)


@pytest.mark.parametrize("key", ["/../etc/passwd", "a/b", "/", "/..", "", "/x y"])
def test_keys_that_are_not_shm_names_are_refused(memory: SystemSharedMemory, key: str) -> None:
    with pytest.raises(InvalidInput, match="not a POSIX shared memory name"):
        memory.register("r", key, offset=0, byte_size=8)


def test_a_region_reads_and_writes_at_its_offset(memory: SystemSharedMemory) -> None:
    memory.register("r", "/data", offset=16, byte_size=32)
    assert memory.read(RegionSlice("r", 4, 4)) == bytes([20, 21, 22, 23])
    memory.write(RegionSlice("r", 0, 4), b"\xff" * 4)
    assert (memory.root / "data").read_bytes()[16:20] == b"\xff" * 4
    with pytest.raises(InvalidInput, match="run past"):
        memory.read(RegionSlice("r", 30, 4))
    with pytest.raises(InvalidInput, match="needs 8 bytes"):
        memory.write(RegionSlice("r", 0, 4), b"\0" * 8)
    with pytest.raises(Conflict, match="already registered"):
        memory.register("r", "/data", offset=0, byte_size=8)
    [status] = memory.status("r")
    assert (status.key, status.offset, status.byte_size) == ("/data", 16, 32)
    memory.unregister("r")
    memory.unregister("r")  # unknown names are no error, as in Triton
    with pytest.raises(ModelNotFound, match="unable to find"):
        memory.read(RegionSlice("r", 0, 4))


def test_a_region_must_fit_its_object(memory: SystemSharedMemory) -> None:
    with pytest.raises(InvalidInput, match="does not fit"):
        memory.register("r", "/data", offset=60, byte_size=8)
    with pytest.raises(InvalidInput, match="no shared memory object"):
        memory.register("r", "/missing", offset=0, byte_size=8)


def test_parameters_naming_a_region() -> None:
    assert region_slice({}, "x") is None
    assert region_slice(
        {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4},
        "x",
    ) == RegionSlice("r", 4, 8)
    for bad in (
        {"shared_memory_region": "r"},
        {"shared_memory_region": "r", "shared_memory_byte_size": -1},
        {"shared_memory_region": "r", "shared_memory_byte_size": True},
    ):
        with pytest.raises(InvalidInput, match="shared_memory_byte_size"):
            region_slice(bad, "x")
