"""Triton's system shared-memory extension, driven as tritonclient's own examples do:
``tritonclient.utils.shared_memory`` creates the regions, the HTTP and gRPC clients
register them, inputs are named by region and outputs land in regions, against real
``modelport serve`` processes (one, and two with ``--processes 2`` so a region
registered through one process is known to the other). CUDA shared memory answers
UNIMPLEMENTED / 501 with its reason."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from support.cluster_fixtures import free_port

pytestmark = pytest.mark.timeout(120)

WIDTH = 4  # the test repository's add_sub model: [batch, 4] FP32
BYTES = 2 * WIDTH * 4  # two rows of FP32


@dataclass
class Served:
    server: Any  # conftest.ServerProcess
    http_url: str
    grpc_url: str


@pytest.fixture(scope="module")
def served(server_factory: Any) -> Served:
    grpc_port = free_port()
    server = server_factory(grpc_port=grpc_port)
    return Served(server, server.url.removeprefix("http://"), f"127.0.0.1:{grpc_port}")


@dataclass
class Regions:
    """One test's regions: inputs and outputs of add_sub, with unique keys."""

    tag: str
    handles: dict[str, Any]

    def key(self, name: str) -> str:
        return f"/{self.tag}_{name}"


@pytest.fixture
def regions() -> Iterator[Regions]:
    tag = f"mp{uuid.uuid4().hex[:10]}"
    made = Regions(tag, {})
    for name in ("input0", "input1", "output0", "output1"):
        made.handles[name] = shm.create_shared_memory_region(f"{tag}_{name}", made.key(name), BYTES)
    yield made
    for handle in made.handles.values():
        shm.destroy_shared_memory_region(handle)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
    return a, np.full((2, WIDTH), 0.5, dtype=np.float32)


def _register_all(client: Any, regions: Regions) -> None:
    for name in regions.handles:
        client.register_system_shared_memory(f"{regions.tag}_{name}", regions.key(name), BYTES)


def _infer_through_regions(client: Any, module: Any, regions: Regions) -> Any:
    """add_sub with both inputs read from regions and both outputs written to regions."""
    a, b = _inputs()
    shm.set_shared_memory_region(regions.handles["input0"], [a])
    shm.set_shared_memory_region(regions.handles["input1"], [b])
    inputs = [
        module.InferInput("INPUT0", [2, WIDTH], "FP32"),
        module.InferInput("INPUT1", [2, WIDTH], "FP32"),
    ]
    inputs[0].set_shared_memory(f"{regions.tag}_input0", BYTES)
    inputs[1].set_shared_memory(f"{regions.tag}_input1", BYTES)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(f"{regions.tag}_output0", BYTES)
    outputs[1].set_shared_memory(f"{regions.tag}_output1", BYTES)
    return client.infer("add_sub", inputs, outputs=outputs)


def _outputs(regions: Regions) -> tuple[np.ndarray, np.ndarray]:
    return (
        shm.get_contents_as_numpy(regions.handles["output0"], np.float32, [2, WIDTH]),
        shm.get_contents_as_numpy(regions.handles["output1"], np.float32, [2, WIDTH]),
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_through_system_shared_memory(
    served: Served, regions: Regions, protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    url = served.http_url if protocol == "http" else served.grpc_url
    client = module.InferenceServerClient(url)
    client.unregister_system_shared_memory()
    _register_all(client, regions)
    status = client.get_system_shared_memory_status()
    if protocol == "http":
        listed = {r["name"]: r for r in status}
        assert listed[f"{regions.tag}_input0"]["key"] == regions.key("input0")
        assert int(listed[f"{regions.tag}_input0"]["byte_size"]) == BYTES
    else:
        assert status.regions[f"{regions.tag}_output1"].byte_size == BYTES
    result = _infer_through_regions(client, module, regions)
    # The answer names the regions and carries no tensor bytes.
    output = result.get_output("OUTPUT0")
    params = output["parameters"] if protocol == "http" else output.parameters
    if protocol == "http":
        assert params["shared_memory_region"] == f"{regions.tag}_output0"
        assert params["shared_memory_byte_size"] == BYTES
    else:
        assert params["shared_memory_region"].string_param == f"{regions.tag}_output0"
        assert params["shared_memory_byte_size"].int64_param == BYTES
    a, b = _inputs()
    total, difference = _outputs(regions)
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(difference, a - b)
    client.unregister_system_shared_memory(f"{regions.tag}_input0")
    names = (
        [r["name"] for r in client.get_system_shared_memory_status()]
        if protocol == "http"
        else list(client.get_system_shared_memory_status().regions)
    )
    assert f"{regions.tag}_input0" not in names and f"{regions.tag}_input1" in names
    client.unregister_system_shared_memory()


def test_one_input_in_memory_and_one_in_the_request_over_grpc(
    served: Served, regions: Regions
) -> None:
    """raw_input_contents then holds one entry, for the input not in shared memory."""
    client = grpcclient.InferenceServerClient(served.grpc_url)
    _register_all(client, regions)
    a, b = _inputs()
    shm.set_shared_memory_region(regions.handles["input0"], [a])
    inputs = [
        grpcclient.InferInput("INPUT0", [2, WIDTH], "FP32"),
        grpcclient.InferInput("INPUT1", [2, WIDTH], "FP32"),
    ]
    inputs[0].set_shared_memory(f"{regions.tag}_input0", BYTES)
    inputs[1].set_data_from_numpy(b)
    outputs = [
        grpcclient.InferRequestedOutput("OUTPUT0"),
        grpcclient.InferRequestedOutput("OUTPUT1"),
    ]
    outputs[0].set_shared_memory(f"{regions.tag}_output0", BYTES)
    result = client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    np.testing.assert_array_equal(_outputs(regions)[0], a + b)
    client.unregister_system_shared_memory()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_regions_are_clear_errors_and_the_server_keeps_serving(
    served: Served, regions: Regions, protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    url = served.http_url if protocol == "http" else served.grpc_url
    client = module.InferenceServerClient(url)
    with pytest.raises(InferenceServerException, match="no shared memory object"):
        client.register_system_shared_memory("ghost", f"/{regions.tag}_missing", 16)
    with pytest.raises(InferenceServerException, match="does not fit"):
        client.register_system_shared_memory("big", regions.key("input0"), BYTES * 100)
    client.register_system_shared_memory("twice", regions.key("input0"), BYTES)
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory("twice", regions.key("input1"), BYTES)
    # An input naming a region nobody registered.
    item = module.InferInput("INPUT0", [2, WIDTH], "FP32")
    item.set_shared_memory("nobody", BYTES)
    other = module.InferInput("INPUT1", [2, WIDTH], "FP32")
    other.set_data_from_numpy(_inputs()[1])
    with pytest.raises(InferenceServerException, match="unable to find system shared memory"):
        client.infer("add_sub", [item, other])
    # A region too small for the output asked of it.
    client.register_system_shared_memory("small", regions.key("output0"), 8)
    wanted = module.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory("small", 8)
    both = [module.InferInput(n, [2, WIDTH], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor, data in zip(both, _inputs(), strict=True):
        tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="needs 32 bytes"):
        client.infer("add_sub", both, outputs=[wanted])
    client.unregister_system_shared_memory()
    # CUDA shared memory: refused with the reason, not a missing route.
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        client.get_cuda_shared_memory_status()
    assert client.is_server_ready()


def test_a_region_registered_through_one_process_serves_every_process(
    server_factory: Any, regions: Regions
) -> None:
    """``--processes 2``: the register call is applied in both processes, so infers
    landing on either read the region (many connections spread over both)."""
    server = server_factory(args=["--processes", "2"])
    url = server.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url)
    # Ready means the process that answered is; a peer still starting refuses the
    # register with 503 naming itself (the call may be sent again), so wait for both.
    deadline = time.monotonic() + 30
    while True:
        try:
            _register_all(client, regions)
            break
        except InferenceServerException as exc:
            assert "not everywhere" in str(exc) and time.monotonic() < deadline, exc
            time.sleep(0.2)
            with contextlib.suppress(InferenceServerException):  # the peer may still start
                client.unregister_system_shared_memory()
    a, b = _inputs()
    for _ in range(12):  # a fresh connection each time: SO_REUSEPORT spreads them
        fresh = httpclient.InferenceServerClient(url)
        _infer_through_regions(fresh, httpclient, regions)
        np.testing.assert_array_equal(_outputs(regions)[0], a + b)
        fresh.close()
    assert len(client.get_system_shared_memory_status()) == 4
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []
    server.stop()


def test_register_is_an_admin_call(server_factory: Any, regions: Regions) -> None:
    """Bound beyond loopback without keys, mapping server memory is refused (403) like
    loading models; status and infers stay open."""
    server = server_factory(args=["--host", "0.0.0.0"])
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match=r"admin|refused"):
        client.register_system_shared_memory("x", regions.key("input0"), BYTES)
    assert client.get_system_shared_memory_status() == []
    server.stop()
    assert os.path.exists(f"/dev/shm/{regions.tag}_input0")
