"""Numbers a client sends (versions, ``top_k``, header lengths) that are no plain ASCII
number get a clean refusal on every route that takes one, never a 500 or gRPC UNKNOWN
(issue 20, item 3). Unicode digits (``²``, Arabic-Indic, full-width) pass
``str.isdigit()`` and then fail ``int()``; 5,000 digits exceed ``int()``'s limit.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.errors import ModelNotFound
from modelport.numbers import natural
from modelport.protos import grpc_service_pb2 as pb
from modelport.tasks.service import _pick_version

# superscripts, Arabic-Indic, full-width, N'Ko and Bengali digits
ODD_DIGITS = "\u00b2\u00b3\u00b9" + "".join(
    chr(c) for c in [*range(0x660, 0x66A), *range(0xFF10, 0xFF1A), 0x7C0, 0x9E7]
)
odd_numbers = st.one_of(
    st.text(alphabet=ODD_DIGITS + "0123456789", min_size=1, max_size=6).filter(
        lambda t: natural(t) is None
    ),
    st.integers(min_value=19, max_value=5000).map(lambda n: "9" * n),
    st.sampled_from(
        ["-1", "+1", " 1", "1 ", "1_0", "0x1", "1e3", "\u0661", "\u00b2", "1.0", "\u22121"]
    ),
)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FINE_HTTP = {400, 404, 405, 413, 422}
FINE_GRPC = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(server_factory: Any) -> Any:
    port = free_port()
    proc = server_factory(grpc_port=port)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        yield client, f"127.0.0.1:{port}"


def _http_calls(client: httpx.Client, number: str) -> list[httpx.Response]:
    v = quote(number, safe="")
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}]}  # fmt: skip
    return [
        client.post(f"/v2/models/add_sub/versions/{v}/infer", json=body),
        client.get(f"/v2/models/add_sub/versions/{v}"),
        client.get(f"/v2/models/add_sub/versions/{v}/ready"),
        client.get(f"/v2/models/add_sub/versions/{v}/config"),
        client.get(f"/v2/models/add_sub/versions/{v}/stats"),
        client.get(f"/v1/models/add_sub/versions/{v}"),
        client.get(f"/v1/models/add_sub/versions/{v}/metadata"),
        client.post(f"/v1/models/add_sub/versions/{v}:predict", json={"instances": [[1] * 4]}),
        client.get("/api/models/add_sub", params={"version": number}),
        client.post("/api/models/add_sub/predict", params={"version": number}, json={}),
        client.post("/api/models/add_sub/predict", params={"top_k": number}, json={}),
        client.post(
            "/api/models/add_sub/predict",
            json={"inputs": {"INPUT0": [1, 2, 3, 4]}, "parameters": {"top_k": number}},
        ),
        client.post(
            "/api/tasks",
            data={"model": "add_sub", "version": number},
            files={"file": ("a.txt", b"x")},
        ),
        client.post(
            "/v2/models/add_sub/infer",
            content=b'{"inputs": []}',
            # h11 sends no header with spaces around it; the UTF-8 bytes of the rest
            headers=[(b"Inference-Header-Content-Length", number.strip().encode() or b"x")],
        ),
    ]


@SETTINGS
@given(number=odd_numbers)
def test_http_routes_refuse_odd_numbers_cleanly(server: Any, number: str) -> None:
    client, _ = server
    for answer in _http_calls(client, number):
        assert answer.status_code < 500, (answer.request.url, answer.text)


def test_header_lengths_in_unicode_digits_are_refused(server: Any) -> None:
    client, _ = server
    for length in ("\u00b2", "\u0661\u0662", "\uff19", "9" * 5000):
        answer = client.post(
            "/v2/models/add_sub/infer",
            content=b'{"inputs": []}',
            headers=[(b"Inference-Header-Content-Length", length.encode())],
        )
        assert answer.status_code == 400, answer.text


@SETTINGS
@given(number=odd_numbers)
def test_grpc_methods_refuse_odd_versions_cleanly(server: Any, number: str) -> None:
    _, target = server
    with grpc.insecure_channel(target) as channel:
        service = "/inference.GRPCInferenceService/"
        calls = [
            ("ModelInfer", pb.ModelInferRequest(model_name="add_sub", model_version=number),
             pb.ModelInferResponse),
            ("ModelReady", pb.ModelReadyRequest(name="add_sub", version=number),
             pb.ModelReadyResponse),
            ("ModelMetadata", pb.ModelMetadataRequest(name="add_sub", version=number),
             pb.ModelMetadataResponse),
            ("ModelConfig", pb.ModelConfigRequest(name="add_sub", version=number),
             pb.ModelConfigResponse),
            ("ModelStatistics", pb.ModelStatisticsRequest(name="add_sub", version=number),
             pb.ModelStatisticsResponse),
        ]  # fmt: skip
        for method, request, reply in calls:
            stub = channel.unary_unary(
                service + method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=reply.FromString,
            )
            try:
                answer = stub(request, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() in FINE_GRPC, (method, exc.code(), exc.details())
            else:
                assert method == "ModelReady" and not answer.ready, (method, number)


@given(number=odd_numbers)
def test_task_versions_refuse_odd_numbers(number: str) -> None:
    with pytest.raises(ModelNotFound):
        _pick_version("m", number, {1, 2})


def test_plain_numbers_still_pick() -> None:
    assert _pick_version("m", "2", {1, 2}) == 2
    assert _pick_version("m", "", {1, 2}) == 2
