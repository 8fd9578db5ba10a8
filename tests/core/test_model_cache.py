"""Memory limits: past ``max_loaded_models`` or ``max_loaded_bytes`` the least recently
used idle model unloads; a request for it loads it again and waits for the load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from modelport.core.cache import MemoryLimits, Resident, files_size, make_room
from modelport.core.service import InferenceService
from modelport.errors import ModelUnavailable
from modelport.tensors import InferenceRequest, Tensor
from support.builders import write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

FAKE = """\
runtime: fake
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""

# A python model that counts its loads in a file beside it.
COUNTING = """\
import time
from pathlib import Path

class Model:
    def setup(self, context):
        with (context.model_dir / "loads.txt").open("a") as f:
            f.write("load\\n")
        time.sleep(context.spec.parameters.get("setup_delay", 0))

    def predict(self, inputs):
        return {"y": inputs["x"]}
"""

PYTHON_YAML = """\
runtime: python
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def _request(name: str) -> InferenceRequest:
    return InferenceRequest(name, (Tensor("x", "FP32", np.ones((1, 2), np.float32)),))


def _states(service: InferenceService) -> dict[str, tuple[str, str]]:
    return {r.name: (r.state, r.reason) for r in service.index()}


def _evicted(setting: str = "max_loaded_models") -> tuple[str, str]:
    return ("UNAVAILABLE", f"unloaded to stay under {setting} (loads again on demand)")


def _loads(repo: Path, name: str) -> int:
    return len((repo / name / "loads.txt").read_text().splitlines())


def test_make_room_picks_the_least_recently_used_idle_models() -> None:
    resident = [
        Resident("old-busy", 1, 10, idle=False),
        Resident("old", 2, 10, idle=True),
        Resident("newer", 3, 10, idle=True),
        Resident("newest", 4, 10, idle=True),
    ]
    room = make_room(resident, 10, MemoryLimits(max_models=3))
    assert room.evict == ("old", "newer") and room.fits and room.setting == "max_loaded_models"
    room = make_room(resident, 35, MemoryLimits(max_bytes=40))
    assert room.evict == ("old", "newer", "newest")
    assert not room.fits and room.setting == "max_loaded_bytes"  # old-busy stays
    assert make_room(resident, 10, MemoryLimits(max_models=5)).evict == ()


async def test_count_cap_unloads_the_least_recently_used(repo: Path, serve: Start) -> None:
    for name in ("a", "b", "c"):
        write_model(repo, name, FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=2))
    # Loading in name order: c's load evicted a, the least recently used.
    assert _states(service) == {"a": _evicted(), "b": ("READY", ""), "c": ("READY", "")}

    await service.infer(_request("c"))
    response = await service.infer(_request("a"))  # loads a again, evicting b
    assert response.outputs[0].data.tolist() == [[1, 1]]
    assert _states(service) == {"a": ("READY", ""), "b": _evicted(), "c": ("READY", "")}
    await service.infer(_request("a"))
    await service.infer(_request("b"))  # c was used less recently than a
    assert _states(service) == {"a": ("READY", ""), "b": ("READY", ""), "c": _evicted()}
    assert sum(1 for m in service.models() if m.versions) == 2


async def test_metadata_of_an_evicted_model_needs_no_load(repo: Path, serve: Start) -> None:
    for name in ("a", "b"):
        write_model(repo, name, FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1))
    assert _states(service)["a"] == _evicted()
    assert [t.name for t in service.metadata("a").inputs] == ["x"]
    assert _states(service)["a"] == _evicted()


async def test_byte_cap_counts_the_files_on_disk(repo: Path, serve: Start) -> None:
    for name in ("a", "b", "c"):
        write_model(repo, name, FAKE, {"1/weights.bin": b"\0" * 1000})
    write_model(repo, "huge", FAKE, {"1/weights.bin": b"\0" * 5000})
    limits = MemoryLimits(max_bytes=2500)  # two of a, b, c with their model.yaml
    service = await serve(limits=limits)
    states = _states(service)
    assert states["a"] == _evicted("max_loaded_bytes")
    assert states["b"] == states["c"] == ("READY", "")
    state, reason = states["huge"]
    assert state == "UNAVAILABLE" and "more than max_loaded_bytes (2500)" in reason
    with pytest.raises(ModelUnavailable, match="more than max_loaded_bytes"):
        await service.infer(_request("huge"))
    await service.infer(_request("a"))
    await service.infer(_request("b"))
    assert _states(service)["c"] == _evicted("max_loaded_bytes")
    loaded = [files_size(repo / m.name, (1,)) for m in service.models() if m.versions]
    assert len(loaded) == 2 and sum(loaded) <= 2500


async def test_a_model_mid_request_is_never_evicted(repo: Path, serve: Start) -> None:
    write_model(repo, "a", FAKE + "parameters: {delay_ms: 400}\n", {"1/.keep": ""})
    write_model(repo, "b", FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1))
    await service.infer(_request("a"))  # loads a again; b is evicted
    slow = asyncio.create_task(service.infer(_request("a")))
    await asyncio.sleep(0.05)
    # b's load must wait for a's request: a is not unloaded under it.
    fast = asyncio.create_task(service.infer(_request("b")))
    await asyncio.sleep(0.1)
    assert not fast.done() and service.model("a").versions
    assert (await slow).outputs[0].data.tolist() == [[1, 1]]
    await fast
    assert _states(service) == {"a": _evicted(), "b": ("READY", "")}


async def test_concurrent_requests_share_one_load(repo: Path, serve: Start) -> None:
    yaml = PYTHON_YAML + "parameters: {setup_delay: 0.2}\n"
    write_model(repo, "a", yaml, {"1/model.py": COUNTING})
    write_model(repo, "b", FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1))
    assert _loads(repo, "a") == 1 and _states(service)["a"] == _evicted()
    responses = await asyncio.gather(*(service.infer(_request("a")) for _ in range(20)))
    assert all(r.outputs[0].data.tolist() == [[1, 1]] for r in responses)
    assert _loads(repo, "a") == 2
    # The server stayed ready while the model loaded on demand.
    assert service.ready()


async def test_a_load_slower_than_the_timeout_fails_the_request(repo: Path, serve: Start) -> None:
    yaml = PYTHON_YAML + "parameters: {setup_delay: 0.6}\n"
    write_model(repo, "a", yaml, {"1/model.py": COUNTING})
    write_model(repo, "b", FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1, load_timeout_s=0.2))
    with pytest.raises(ModelUnavailable, match=r"did not load again within 0.2 s"):
        await service.infer(_request("a"))
    # The load goes on: a request once it is done finds it loaded.
    while not service.model("a").versions:
        await asyncio.sleep(0.01)
    await service.infer(_request("a"))
    assert _loads(repo, "a") == 2


async def test_an_unloaded_model_does_not_load_on_demand(repo: Path, serve: Start) -> None:
    for name in ("a", "b"):
        write_model(repo, name, FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1))
    await service.unload("a")
    assert _states(service)["a"] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(ModelUnavailable, match="'a' is unavailable: unloaded"):
        await service.infer(_request("a"))


async def test_an_evicted_model_that_no_longer_loads_says_why(repo: Path, serve: Start) -> None:
    for name in ("a", "b"):
        write_model(repo, name, FAKE, {"1/.keep": ""})
    service = await serve(limits=MemoryLimits(max_models=1))
    (repo / "a" / "model.yaml").write_text("runtime: fake\nmax_batch_sise: 4\n")
    with pytest.raises(ModelUnavailable, match="max_batch_sise"):
        await service.infer(_request("a"))
    state, reason = _states(service)["a"]
    assert state == "UNAVAILABLE" and "max_batch_sise" in reason
    await service.infer(_request("b"))  # b kept serving
