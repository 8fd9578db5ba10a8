"""The v2 REST API on the wire, with httpx: against a real server process and in process.

Every test taking ``client`` runs twice: once against the shared ``modelport serve``
process, once against the same application in this process (``httpx.ASGITransport``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(20)

HEADER_LENGTH = "Inference-Header-Content-Length"
A = [[1.0, 2.0, 3.0, 4.0]]
B = [[0.5, 0.5, 0.5, 0.5]]


@pytest.fixture(params=["process", "inproc"])
async def client(
    request: pytest.FixtureRequest, server: str, inproc_factory: Any
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "process":
        async with httpx.AsyncClient(base_url=server, timeout=10) as c:
            yield c
    else:
        async with inproc_factory() as c:
            yield c


def tensor(name: str, shape: list[int], datatype: str, data: Any = None, **params: Any) -> Any:
    """One input of a v2 request: JSON ``data``, or ``parameters`` such as binary_data_size."""
    entry: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if data is not None:
        entry["data"] = data
    if params:
        entry["parameters"] = params
    return entry


def add_sub_json(a: Any = A, b: Any = B, **extra: Any) -> dict[str, Any]:
    shape = list(np.shape(a))
    return {
        "inputs": [
            {"name": "INPUT0", "shape": shape, "datatype": "FP32", "data": a},
            {"name": "INPUT1", "shape": list(np.shape(b)), "datatype": "FP32", "data": b},
        ],
        **extra,
    }


def binary_body(doc: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(doc).encode()
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head))}


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers[HEADER_LENGTH.lower()])
    return json.loads(response.content[:length]), response.content[length:]


async def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    message = body["error"]
    assert isinstance(message, str) and message
    for needle in needles:
        assert needle in message, message
    return message


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/ready")).status_code == 200
    response = await client.post("/v2/models/add_sub/infer", json=add_sub_json())
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1.5, 2.5, 3.5, 4.5]


# -- health, metadata, docs ----------------------------------------------------------------


async def test_health_and_server_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "modelport"
    assert "binary_tensor_data" in meta["extensions"]
    assert (await client.get("/v2/models/add_sub/ready")).status_code == 200
    assert (await client.get("/v2/models/broken/ready")).status_code == 503
    await assert_error(await client.get("/v2/models/nope/ready"), 404, "nope")


async def test_docs_and_openapi(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "swagger" in docs.text.lower()
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "modelport"
    for path in ("/v2/models/{model}/infer", "/v2/repository/index", "/v2/health/ready"):
        assert path in spec["paths"]


async def test_repository_index(client: httpx.AsyncClient) -> None:
    every = (await client.post("/v2/repository/index")).json()
    ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
    assert {r["name"] for r in every} - {r["name"] for r in ready} == {"broken"}
    assert all(r["state"] == "READY" for r in ready)
    broken = next(r for r in every if r["name"] == "broken")
    assert broken["state"] == "UNAVAILABLE"
    assert "max_batch_sise" in broken["reason"]
    assert (await client.post("/v2/repository/index", json={"ready": False})).json() == every
    bad = await client.post("/v2/repository/index", content=b"{ready")
    await assert_error(bad, 400, "JSON")


async def test_request_id_header(client: httpx.AsyncClient) -> None:
    sent = {"x-request-id": "trace-7"}
    response = await client.post("/v2/models/add_sub/infer", json=add_sub_json(), headers=sent)
    assert response.headers["x-request-id"] == "trace-7"
    assert (await client.get("/v2", headers=sent)).headers["x-request-id"] == "trace-7"
    first = (await client.get("/v2")).headers["x-request-id"]
    second = (await client.post("/v2/models/add_sub/infer", json=add_sub_json())).headers
    assert first and second["x-request-id"] and first != second["x-request-id"]


# -- infer: encodings -----------------------------------------------------------------------


async def test_json_infer_with_id_and_version(client: httpx.AsyncClient) -> None:
    body = add_sub_json(id="req-1")
    response = await client.post("/v2/models/add_sub/versions/1/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["id"] == "req-1"
    assert doc["model_name"] == "add_sub" and doc["model_version"] == "1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["OUTPUT0"] == {
        "name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.5, 2.5, 3.5, 4.5]
    }  # fmt: skip
    assert outputs["OUTPUT1"]["data"] == [0.5, 1.5, 2.5, 3.5]


async def test_binary_inputs_and_binary_data_output(client: httpx.AsyncClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.25, dtype=np.float32)
    doc = {
        "inputs": [tensor(n, [2, 4], "FP32", binary_data_size=32) for n in ("INPUT0", "INPUT1")],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": False}}],
    }
    content, headers = binary_body(doc, [a.astype("<f4").tobytes(), b.astype("<f4").tobytes()])
    response = await client.post("/v2/models/add_sub/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, tail = split_binary(response)
    out0, out1 = head["outputs"]
    assert out0["parameters"] == {"binary_data_size": 32}
    assert "data" not in out0
    np.testing.assert_array_equal(np.frombuffer(tail, "<f4").reshape(2, 4), a + b)
    assert out1["data"] == (a - b).ravel().tolist()
    assert "parameters" not in out1


async def test_bytes_binary_layout(client: httpx.AsyncClient) -> None:
    # UTF-8 only: ONNX Runtime holds string tensors as str, so other bytes cannot survive.
    items = [b"abc", b"", "\u00e9\u2713".encode(), b"\x00\x10"]
    raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    doc = {
        "inputs": [tensor("INPUT0", [2, 2], "BYTES", binary_data_size=len(raw))],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }
    content, headers = binary_body(doc, [raw])
    response = await client.post(
        "/v2/models/identity_bytes/infer", content=content, headers=headers
    )
    assert response.status_code == 200, response.text
    head, tail = split_binary(response)
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    assert tail == raw


async def test_gzip_request_and_response(client: httpx.AsyncClient) -> None:
    data = np.linspace(-1, 1, 8 * 200).reshape(8, 200)
    doc = {"inputs": [tensor("INPUT0", [8, 200], "FP64", data.ravel().tolist())]}
    raw = json.dumps(doc).encode()
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        response = await client.post(
            "/v2/models/identity_fp64/infer",
            content=packed,
            headers={"Content-Encoding": encoding, "Accept-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) < len(response.content)
        assert response.json()["outputs"][0]["data"] == data.ravel().tolist()

    # Binary data in a gzip body: the header gives the uncompressed JSON's length.
    binary_doc = {"inputs": [tensor("INPUT0", [8, 200], "FP64", binary_data_size=data.nbytes)]}
    head = json.dumps(binary_doc).encode()
    response = await client.post(
        "/v2/models/identity_fp64/infer",
        content=gzip.compress(head + data.astype("<f8").tobytes()),
        headers={
            "Content-Encoding": "gzip",
            HEADER_LENGTH: str(len(head)),
            "Accept-Encoding": "identity",
        },
    )
    assert response.status_code == 200, response.text
    assert "content-encoding" not in response.headers
    assert response.json()["outputs"][0]["data"] == data.ravel().tolist()

    # Small responses are not worth compressing.
    small = await client.post(
        "/v2/models/add_sub/infer", json=add_sub_json(), headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in small.headers


# -- infer: bad requests ------------------------------------------------------------------


async def test_bad_requests_are_400_and_the_server_keeps_serving(
    client: httpx.AsyncClient,
) -> None:
    url = "/v2/models/add_sub/infer"
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        ({"content": b'{"inputs": [', "headers": {}}, ("not valid JSON",)),
        ({"content": b"[1, 2]", "headers": {}}, ("JSON object",)),
        ({"json": {"inputs": []}}, ("inputs",)),
        ({"json": add_sub_json(a=[[1.0, 2.0, 3.0]], b=[[1.0, 2.0, 3.0]])}, ("[1, 3]", "[-1, 4]")),
        ({"json": add_sub_json(a=[["x", 1, 2, 3]])}, ("INPUT0", "FP32")),
        ({"json": {"inputs": [tensor("INPUT0", [1, 4], "FP99", [1, 2, 3, 4])]}}, ("FP99",)),
        ({"json": {"inputs": [tensor("INPUT0", [1, 4], "FP32")]}}, ("binary_data_size",)),
        ({"json": add_sub_json(outputs=[{"name": "NOPE"}])}, ("NOPE",)),
        (
            {"json": {"inputs": [tensor("INPUT0", [1, 4], "FP32", [1, 2, 3, 4, 5])]}},
            ("needs 4 values", "got 5"),
        ),
    ]
    for kwargs, needles in cases:
        await assert_error(await client.post(url, **kwargs), 400, *needles)
        assert (await client.get("/v2/health/live")).status_code == 200
    await assert_still_serving(client)


async def test_header_content_length_mismatches(client: httpx.AsyncClient) -> None:
    url = "/v2/models/add_sub/infer"
    chunk = np.ones((1, 4), "<f4").tobytes()
    doc = {"inputs": [tensor(n, [1, 4], "FP32", binary_data_size=16) for n in ("INPUT0", "INPUT1")]}
    content, headers = binary_body(doc, [chunk, chunk])
    length = int(headers[HEADER_LENGTH])
    assert (await client.post(url, content=content, headers=headers)).status_code == 200

    too_long = {HEADER_LENGTH: str(len(content) + 1)}
    await assert_error(await client.post(url, content=content, headers=too_long), 400, "only")
    not_number = {HEADER_LENGTH: "twelve"}
    await assert_error(await client.post(url, content=content, headers=not_number), 400, "number")
    cut = {HEADER_LENGTH: str(length - 3)}  # JSON cut short
    await assert_error(await client.post(url, content=content, headers=cut), 400, "JSON")
    extra = content + b"\x00" * 8  # bytes nobody claims
    await assert_error(await client.post(url, content=extra, headers=headers), 400, "claims")
    short = content[:-4]  # the last chunk runs past the end
    await assert_error(
        await client.post(url, content=short, headers=headers), 400, "binary_data_size"
    )
    await assert_still_serving(client)


async def test_bad_content_encoding(client: httpx.AsyncClient) -> None:
    url = "/v2/models/add_sub/infer"
    not_gzip = {"Content-Encoding": "gzip"}
    await assert_error(await client.post(url, content=b"plain", headers=not_gzip), 400, "gzip")
    brotli = {"Content-Encoding": "br"}
    await assert_error(await client.post(url, content=b"{}", headers=brotli), 501, "br")
    await assert_still_serving(client)


async def test_not_found_and_unavailable(client: httpx.AsyncClient) -> None:
    body = add_sub_json()
    await assert_error(await client.post("/v2/models/nope/infer", json=body), 404, "nope")
    await assert_error(
        await client.post("/v2/models/add_sub/versions/2/infer", json=body), 404, "version 2"
    )
    await assert_error(
        await client.post("/v2/models/add_sub/versions/latest/infer", json=body), 400, "latest"
    )
    await assert_error(await client.get("/v2/models/nope"), 404, "nope")
    await assert_error(await client.get("/v2/models/add_sub/versions/9"), 404)
    await assert_error(await client.get("/v2/models/nope/config"), 404)
    await assert_error(await client.get("/v2/models/nope/stats"), 404)
    await assert_error(
        await client.post("/v2/models/broken/infer", json=body), 503, "max_batch_sise"
    )
    await assert_still_serving(client)


# -- limits: overload and request size ----------------------------------------------------


async def burst(client: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    async def one(i: int) -> httpx.Response:
        body = {"inputs": [tensor("INPUT0", [1, 2], "FP32", [i, -i])]}
        return await client.post("/v2/models/slow/infer", json=body, timeout=15)

    responses = await asyncio.gather(*(one(i) for i in range(count)))
    for i, response in enumerate(responses):
        if response.status_code == 200:
            assert response.json()["outputs"][0]["data"] == [i, -i]
    return list(responses)


async def test_overload_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    config = (await client.get("/v2/models/slow/config")).json()
    queue = config["modelport"]["batching"]["max_queue_size"]
    assert config["max_batch_size"] == 1 and queue < 5  # one at a time, a short queue
    rejected: list[httpx.Response] = []
    accepted = 0
    for _ in range(5):  # until the queue has been full at least once
        responses = await burst(client, 4 * queue + 4)
        assert {r.status_code for r in responses} <= {200, 503}
        rejected += [r for r in responses if r.status_code == 503]
        accepted += sum(r.status_code == 200 for r in responses)
        if rejected:
            break
    assert rejected, "the slow model's queue never filled"
    assert accepted >= 1
    for response in rejected:
        await assert_error(response, 503, "overloaded", "max_queue_size")
        assert int(response.headers["retry-after"]) >= 1
    # Once the burst is over the model serves again.
    assert [r.status_code for r in await burst(client, 1)] == [200]

    metrics = await scrape(client)
    slow = {"model": "slow", "version": "1"}
    assert value(metrics, "modelport_requests_total", outcome="overloaded", **slow) >= len(rejected)
    assert value(metrics, "modelport_requests_total", outcome="success", **slow) >= accepted + 1


async def test_a_request_whose_client_left_is_not_computed(server: str) -> None:
    """A client that disconnects while its request waits in the queue: the request is
    dropped, never computed (counted as failed), and the model goes on serving."""

    def slow_request(i: int) -> bytes:
        body = json.dumps({"inputs": [tensor("INPUT0", [1, 2], "FP32", [i, i])]}).encode()
        return (
            b"POST /v2/models/slow/infer HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def stats() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server, timeout=10) as c:
            (found,) = (await c.get("/v2/models/slow/stats")).json()["model_stats"]
            return dict(found)

    async def cancelled() -> float:
        async with httpx.AsyncClient(base_url=server, timeout=10) as c:
            samples = await scrape(c)
        labels = {"model": "slow", "version": "1", "outcome": "cancelled"}
        return value(samples, "modelport_requests_total", 0, **labels)

    host, port = server.removeprefix("http://").rsplit(":", 1)
    before, cancelled_before = await stats(), await cancelled()
    _, first = await asyncio.open_connection(host, int(port))  # runs for 150 ms
    first.write(slow_request(1))
    await first.drain()
    await asyncio.sleep(0.03)
    _, leaving = await asyncio.open_connection(host, int(port))  # waits behind it
    leaving.write(slow_request(2))
    await leaving.drain()
    await asyncio.sleep(0.03)
    leaving.close()  # gone while its request waits
    await leaving.wait_closed()
    await asyncio.sleep(0.6)  # both would have run by now
    after = await stats()
    first.close()
    await first.wait_closed()
    assert after["inference_count"] - before["inference_count"] == 1, (before, after)
    failed = after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"]
    assert failed == 1
    assert await cancelled() - cancelled_before == 1
    async with httpx.AsyncClient(base_url=server, timeout=10) as c:
        assert [r.status_code for r in await burst(c, 1)] == [200]


async def test_request_over_max_request_bytes_is_413(
    server_factory: Any, inproc_factory: Any
) -> None:
    limit = 4096
    process = server_factory(env={"MODELPORT_MAX_REQUEST_BYTES": str(limit)})
    try:
        async with (
            httpx.AsyncClient(base_url=process.url, timeout=10) as remote,
            inproc_factory(max_request_bytes=limit) as local,
        ):
            for client in (remote, local):
                await check_413(client, limit)
    finally:
        process.stop()


async def check_413(client: httpx.AsyncClient, limit: int) -> None:
    doc = {"inputs": [tensor("INPUT0", [8, 200], "FP64", [0.0] * 1600)]}
    body = json.dumps(doc).encode()
    assert len(body) > limit
    response = await client.post("/v2/models/identity_fp64/infer", content=body)
    await assert_error(response, 413, "max_request_bytes", str(limit))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = await client.post("/v2/models/identity_fp64/infer", content=chunks())
    await assert_error(response, 413, "max_request_bytes")
    small = await client.post("/v2/models/add_sub/infer", json=add_sub_json())
    assert small.status_code == 200
    await assert_still_serving(client)


# -- repository: load and unload ---------------------------------------------------------


async def test_unload_and_load(own_server: Any, inproc_factory: Any) -> None:
    async with (
        httpx.AsyncClient(base_url=own_server.url, timeout=10) as remote,
        inproc_factory() as local,
    ):
        for client in (remote, local):
            assert (await client.post("/v2/repository/models/add_sub/unload")).json() == {}
            assert (await client.get("/v2/models/add_sub/ready")).status_code == 503
            await assert_error(
                await client.post("/v2/models/add_sub/infer", json=add_sub_json()), 503, "unloaded"
            )
            assert (await client.get("/v2/health/ready")).status_code == 200
            rows = (await client.post("/v2/repository/index", json={})).json()
            assert {"name": "add_sub", "state": "UNAVAILABLE", "reason": "unloaded"} in rows
            assert (await client.post("/v2/repository/models/add_sub/load")).status_code == 200
            await assert_still_serving(client)
            await assert_error(
                await client.post("/v2/repository/models/add_sub/load", content=b"{x"), 400
            )
            await assert_error(await client.post("/v2/repository/models/nope/load"), 404)
            await assert_error(
                await client.post("/v2/repository/models/broken/load"), 400, "max_batch_sise"
            )


# -- metrics --------------------------------------------------------------------------------


Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """/metrics as {sample name: {labels: value}}, parsed by prometheus_client."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(samples: Samples, name: str, default: float | None = None, **labels: str) -> float:
    found = samples.get(name, {}).get(frozenset(labels.items()), default)
    assert found is not None, f"no sample {name}{labels}"
    return found


async def test_metrics(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    mlp = {"model": "mlp", "version": "1"}
    base = value(before, "modelport_requests_total", 0, outcome="success", **mlp)
    body = {"inputs": [tensor("INPUT0", [2, 16], "FP32", [0.5] * 32)]}
    for _ in range(3):
        assert (await client.post("/v2/models/mlp/infer", json=body)).status_code == 200
    bad = {"inputs": [tensor("INPUT0", [1, 3], "FP32", [1, 2, 3])]}
    assert (await client.post("/v2/models/mlp/infer", json=bad)).status_code == 400
    m = await scrape(client)

    assert value(m, "modelport_requests_total", outcome="success", **mlp) == base + 3
    assert value(m, "modelport_requests_total", outcome="invalid_input", **mlp) >= 1
    assert value(m, "modelport_inferences_total", **mlp) >= 6
    assert value(m, "modelport_executions_total", **mlp) >= 3
    histograms = ("request_duration", "queue_duration", "compute_duration")
    for name in (*(f"{h}_seconds" for h in histograms), "batch_size"):
        hist = f"modelport_{name}"
        count = value(m, f"{hist}_count", **mlp)
        assert count >= 3, hist
        assert value(m, f"{hist}_bucket", le="+Inf", **mlp) == count
        assert value(m, f"{hist}_sum", **mlp) > 0
    # Every batch of this test had 2 rows: the le=1 bucket stayed, le=2 grew by 3.
    grew = value(m, "modelport_batch_size_bucket", le="2", **mlp) - value(
        before, "modelport_batch_size_bucket", 0, le="2", **mlp
    )
    assert grew == 3
    assert value(m, "modelport_queue_depth", **mlp) == 0
    assert value(m, "modelport_instances", device="cpu", **mlp) == 1
    assert value(m, "modelport_model_ready", model="mlp") == 1
    assert value(m, "modelport_model_ready", model="broken") == 0
