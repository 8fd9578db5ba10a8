"""Safe defaults: a server reachable from the network refuses admin calls.

Real servers: one bound to 0.0.0.0 (the tests still talk to it over 127.0.0.1 only)
refuses load and unload over HTTP (403) and gRPC (PERMISSION_DENIED) while it keeps
serving inference; ``admin = "on"`` allows them again, ``"off"`` refuses them anywhere.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from modelport.settings import Settings, admin_refusal


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_allow_admin(host: str) -> None:
    assert admin_refusal(Settings(host=host)) == ""


def test_other_hosts_refuse_admin_and_say_how_to_allow_it() -> None:
    reason = admin_refusal(Settings(host="0.0.0.0"))
    assert "0.0.0.0" in reason and "MODELPORT_ADMIN=on" in reason and "127.0.0.1" in reason
    assert admin_refusal(Settings(host="0.0.0.0", admin="on")) == ""
    assert "modelport keys create" in reason
    # With API keys enforced an admin key allows them (the guard checks the scope).
    assert admin_refusal(Settings(host="0.0.0.0"), keys_enforced=True) == ""
    assert "admin = off" in admin_refusal(Settings(host="127.0.0.1", admin="off"))


def _add_sub_body() -> dict[str, Any]:
    data = [1.0, 2.0, 3.0, 4.0]
    return {"inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32", "data": data}
                       for n in ("INPUT0", "INPUT1")]}  # fmt: skip


def test_a_network_bound_server_refuses_admin_but_serves(
    server_factory: Any, free_port: Any
) -> None:
    grpc_port = free_port()
    server = server_factory(grpc_port=grpc_port, args=["--host", "0.0.0.0"])
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for action in ("load", "unload"):
            refused = client.post(f"/v2/repository/models/add_sub/{action}")
            assert refused.status_code == 403
            assert "MODELPORT_ADMIN=on" in refused.json()["error"]
        answer = client.post("/v2/models/add_sub/infer", json=_add_sub_body())
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    with pytest.raises(InferenceServerException) as caught:
        triton.unload_model("add_sub")
    assert caught.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
    assert triton.is_model_ready("add_sub")
    x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    y = grpcclient.InferInput("INPUT1", [1, 4], "FP32")
    y.set_data_from_numpy(np.ones((1, 4), np.float32))
    result = triton.infer("add_sub", [x, y])
    assert result.as_numpy("OUTPUT0").tolist() == [[2.0, 2.0, 2.0, 2.0]]
    triton.close()


def test_admin_on_allows_it_and_admin_off_refuses_it_on_loopback(server_factory: Any) -> None:
    allowed = server_factory(args=["--host", "0.0.0.0"], env={"MODELPORT_ADMIN": "on"})
    with httpx.Client(base_url=allowed.url, timeout=30) as client:
        assert client.post("/v2/repository/models/add_sub/load").status_code == 200
    refused = server_factory(env={"MODELPORT_ADMIN": "off"})
    with httpx.Client(base_url=refused.url, timeout=10) as client:
        answer = client.post("/v2/repository/models/add_sub/unload")
        assert answer.status_code == 403
        assert "admin = off" in answer.json()["error"]
