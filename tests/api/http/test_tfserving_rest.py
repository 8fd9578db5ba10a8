"""TensorFlow Serving's REST API on the wire, with httpx: status, metadata, :predict.

Every test taking ``client`` (the shared test repository) or ``tf_client`` (a small
repository of this module's own: version labels, ``_bytes`` outputs, several outputs,
a model without a batch dimension) runs twice: against a real ``modelport serve``
process, and against the same application in this process.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(30)

A = np.array([[1.0, 2.0, 3.0, 4.0], [-1.5, 0.0, 2.25, 8.0]], dtype=np.float32)
B = np.array([[0.5, 0.5, 0.5, 0.5], [2.0, -3.0, 0.25, 1.0]], dtype=np.float32)
OK = {"error_code": "OK", "error_message": ""}


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


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


@pytest.fixture(scope="module")
def tf_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf-repository")
    folder = write_model(
        root,
        "labelled",
        """\
        runtime: onnx
        max_batch_size: 8
        version_policy: {all: true}
        version_labels: {stable: 1, canary: 2}
        """,
    )
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    add_sub_onnx(folder / "2" / "model.onnx", width=3)
    fake = {"1/README": "the fake runtime echoes input i to output i"}
    write_model(
        root,
        "blobs",
        """\
        runtime: fake
        max_batch_size: 8
        inputs: [{name: image_bytes, datatype: BYTES, shape: [-1]}]
        outputs: [{name: out_bytes, datatype: BYTES, shape: [-1]},
                  {name: text, datatype: BYTES, shape: [-1]}]
        """,
        fake,
    )
    write_model(
        root,
        "two_kinds",
        """\
        runtime: fake
        max_batch_size: 8
        inputs: [{name: ids, datatype: INT64, shape: [3]},
                 {name: scale, datatype: FP64, shape: [2, 2]}]
        outputs: [{name: ids_out, datatype: INT64, shape: [3]},
                  {name: scale_out, datatype: FP64, shape: [2, 2]}]
        """,
        fake,
    )
    write_model(
        root,
        "unbatched",
        """\
        runtime: fake
        max_batch_size: 0
        inputs: [{name: x, datatype: FP32, shape: [2]}]
        outputs: [{name: y, datatype: FP32, shape: [2]}]
        """,
        fake,
    )
    return root


@pytest.fixture(scope="module")
def tf_server(server_factory: Any, tf_repo: Path) -> Iterator[str]:
    proc = server_factory(repo=tf_repo)
    yield proc.url
    proc.stop()


@pytest.fixture(params=["process", "inproc"])
async def tf_client(
    request: pytest.FixtureRequest, tf_repo: Path, inproc_factory: Any
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "process":
        url = request.getfixturevalue("tf_server")
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            yield c
    else:
        async with inproc_factory(repo=tf_repo) as c:
            yield c


async def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    for needle in needles:
        assert needle in body["error"], body["error"]
    return str(body["error"])


async def predict(client: httpx.AsyncClient, path: str, doc: Any) -> Any:
    response = await client.post(f"/v1/models/{path}:predict", json=doc)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


# -- status and metadata --------------------------------------------------------------------


async def test_model_status(client: httpx.AsyncClient) -> None:
    want = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": OK}]}
    assert (await client.get("/v1/models/add_sub")).json() == want
    assert (await client.get("/v1/models/add_sub/versions/1")).json() == want
    await assert_error(await client.get("/v1/models/add_sub/versions/7"), 404, "version 7")
    await assert_error(await client.get("/v1/models/nope"), 404, "nope")
    broken = await client.get("/v1/models/broken")
    assert broken.status_code == 200
    (entry,) = broken.json()["model_version_status"]
    assert entry["state"] == "END"
    assert entry["status"]["error_code"] == "UNKNOWN"
    assert "max_batch_sise" in entry["status"]["error_message"]


async def test_metadata_shape(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/v1/models/add_sub/metadata")).json()
    dims = [{"size": "-1", "name": ""}, {"size": "4", "name": ""}]
    tensor = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims, "unknown_rank": False}}
    assert doc == {
        "model_spec": {"name": "add_sub", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {n: {**tensor, "name": n} for n in ("INPUT0", "INPUT1")},
            "outputs": {n: {**tensor, "name": n} for n in ("OUTPUT0", "OUTPUT1")},
            "method_name": "tensorflow/serving/predict",
        }}}},
    }  # fmt: skip
    assert (await client.get("/v1/models/add_sub/versions/1/metadata")).json() == doc
    blobs = (await client.get("/v1/models/identity_bytes/metadata")).json()
    sig = blobs["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["INPUT0"]["dtype"] == "DT_STRING"
    await assert_error(await client.get("/v1/models/nope/metadata"), 404, "nope")
    await assert_error(await client.get("/v1/models/broken/metadata"), 503, "broken")


async def test_labels_not_configured(client: httpx.AsyncClient) -> None:
    for path in ("/v1/models/add_sub/labels/stable", "/v1/models/add_sub/labels/stable/metadata"):
        await assert_error(await client.get(path), 404, "no version labels configured")
    response = await client.post(
        "/v1/models/add_sub/labels/stable:predict", json={"instances": A.tolist()}
    )
    await assert_error(response, 404, "version_labels")


# -- predict: add_sub and mlp, rows and columns ---------------------------------------------


async def test_row_format_with_several_inputs_and_outputs(client: httpx.AsyncClient) -> None:
    instances = [{"INPUT0": a, "INPUT1": b} for a, b in zip(A.tolist(), B.tolist(), strict=True)]
    doc = await predict(client, "add_sub", {"instances": instances})
    assert list(doc) == ["predictions"]
    rows = doc["predictions"]
    assert [list(r) for r in rows] == [["OUTPUT0", "OUTPUT1"]] * 2
    np.testing.assert_allclose([r["OUTPUT0"] for r in rows], A + B)
    np.testing.assert_allclose([r["OUTPUT1"] for r in rows], A - B)


async def test_columnar_format_with_several_inputs(client: httpx.AsyncClient) -> None:
    doc = await predict(client, "add_sub", {"inputs": {"INPUT0": A.tolist(), "INPUT1": B.tolist()}})
    assert list(doc) == ["outputs"]
    np.testing.assert_allclose(doc["outputs"]["OUTPUT0"], A + B)
    np.testing.assert_allclose(doc["outputs"]["OUTPUT1"], A - B)


def mlp_reference(repository: Path, x: np.ndarray) -> np.ndarray:
    model = onnx.load(str(repository / "mlp" / "1" / "model.onnx"))
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return np.maximum(x @ w["W0"], 0) @ w["W1"]


async def test_mlp_rows_and_columns(client: httpx.AsyncClient, repository: Path) -> None:
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    want = mlp_reference(repository, x)
    rows = (await predict(client, "mlp", {"instances": x.tolist()}))["predictions"]
    assert len(rows) == 5 and all(len(r) == 10 for r in rows)
    np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-5)
    named = await predict(client, "mlp", {"instances": [{"INPUT0": r} for r in x.tolist()]})
    np.testing.assert_allclose(named["predictions"], want, rtol=1e-5, atol=1e-5)
    columns = await predict(client, "mlp/versions/1", {"inputs": x.tolist()})
    np.testing.assert_allclose(columns["outputs"], want, rtol=1e-5, atol=1e-5)
    named = await predict(client, "mlp", {"inputs": {"INPUT0": x[:1].tolist()}})
    np.testing.assert_allclose(named["outputs"], want[:1], rtol=1e-5, atol=1e-5)


async def test_versions_and_signature_name(client: httpx.AsyncClient) -> None:
    doc = {"inputs": {"INPUT0": A.tolist(), "INPUT1": B.tolist()}}
    for signature in ("serving_default", "add_sub", ""):
        answer = await predict(client, "add_sub/versions/1", {**doc, "signature_name": signature})
        np.testing.assert_allclose(answer["outputs"]["OUTPUT0"], A + B)
    response = await client.post(
        "/v1/models/add_sub:predict", json={**doc, "signature_name": "classify_x"}
    )
    await assert_error(response, 400, "classify_x", "serving_default")
    response = await client.post("/v1/models/add_sub/versions/2:predict", json=doc)
    await assert_error(response, 404, "no version 2")


async def test_bytes_strings_and_b64_in(client: httpx.AsyncClient) -> None:
    # OUTPUT0 does not end in _bytes, so it comes back as strings (TF Serving's rule).
    doc = {"instances": [["plain", b64("caf\u00e9".encode())], [b64(b"\x00\x10"), ""]]}
    rows = (await predict(client, "identity_bytes", doc))["predictions"]
    assert rows == [["plain", "caf\u00e9"], ["\x00\x10", ""]]
    doc = {"inputs": [[b64(b"abc")]]}
    assert (await predict(client, "identity_bytes", doc))["outputs"] == [["abc"]]


# -- errors ---------------------------------------------------------------------------------


async def test_errors(client: httpx.AsyncClient) -> None:
    rows = {"instances": [{"INPUT0": [1, 2, 3], "INPUT1": [1, 2, 3]}]}
    cases: list[tuple[str, Any, int, tuple[str, ...]]] = [
        ("nope", {"instances": [[1.0]]}, 404, ("nope",)),
        ("add_sub", rows, 400, ("shape",)),
        ("add_sub", {"instances": [{"INPUT0": [1, 2, 3, 4]}]}, 400, ("INPUT1",)),
        ("add_sub", {"instances": A.tolist()}, 400, ("object",)),
        ("add_sub", {"instances": [{"INPUT9": [1]}]}, 400, ("INPUT9",)),
        ("add_sub", {"instances": [], "inputs": {}}, 400, ("exactly one",)),
        ("add_sub", {}, 400, ("instances",)),
        ("mlp", {"instances": []}, 400, ("non-empty",)),
        ("mlp", {"instances": [[1.0] * 16, [1.0] * 15]}, 400, ("same length",)),
        ("mlp", {"instances": [["a"] * 16]}, 400, ("FP32",)),
        ("mlp", {"inputs": [[b64(b"x")] * 16]}, 400, ("FP32",)),
        ("identity_bytes", {"inputs": [[{"b64": "***"}]]}, 400, ("base64",)),
        ("identity_bytes", {"inputs": [[1.5]]}, 400, ("b64",)),
        ("broken", {"instances": [[1.0]]}, 503, ("broken",)),
    ]
    for path, doc, status, needles in cases:
        response = await client.post(f"/v1/models/{path}:predict", json=doc)
        await assert_error(response, status, *needles)
    bad = await client.post("/v1/models/mlp:predict", content=b"{instances")
    await assert_error(bad, 400, "JSON")
    listed = await client.post("/v1/models/mlp:predict", content=b"[1, 2]")
    await assert_error(listed, 400, "JSON object")
    classify = await client.post("/v1/models/mlp:classify", json={"examples": []})
    await assert_error(classify, 501, "classify")
    for path in ("/v1/models/mlp:explode", "/v1/models/mlp", "/v1/models/mlp/x/y:predict"):
        await assert_error(await client.post(path, json={}), 404, "Malformed")
    # Nothing above broke the model.
    x = [[0.0] * 16]
    assert (await predict(client, "mlp", {"instances": x}))["predictions"][0] == [0.0] * 10


# -- this module's repository: labels, _bytes outputs, several outputs, no batch dim ---------


async def test_version_labels(tf_client: httpx.AsyncClient) -> None:
    status = (await tf_client.get("/v1/models/labelled")).json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
    for label, version in (("stable", "1"), ("canary", "2")):
        doc = (await tf_client.get(f"/v1/models/labelled/labels/{label}")).json()
        assert doc == {"model_version_status": [
            {"version": version, "state": "AVAILABLE", "status": OK}]}  # fmt: skip
        meta = (await tf_client.get(f"/v1/models/labelled/labels/{label}/metadata")).json()
        assert meta["model_spec"]["version"] == version
    meta = (await tf_client.get("/v1/models/labelled/labels/canary/metadata")).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in sig["inputs"]["INPUT0"]["tensor_shape"]["dim"]] == ["-1", "3"]
    a, b = A[:, :3], B[:, :3]
    doc = {"inputs": {"INPUT0": a.tolist(), "INPUT1": b.tolist()}}
    for path in ("labelled/labels/canary", "labelled/versions/2", "labelled"):
        out = (await predict(tf_client, path, doc))["outputs"]
        np.testing.assert_allclose(out["OUTPUT1"], a - b)
    response = await tf_client.post("/v1/models/labelled/labels/stable:predict", json=doc)
    await assert_error(response, 400, "shape")
    response = await tf_client.get("/v1/models/labelled/labels/beta")
    await assert_error(response, 404, "beta", "canary", "stable")


async def test_b64_outputs_for_bytes_names(tf_client: httpx.AsyncClient) -> None:
    png, word = b"\x89PNG\r\n\x1a\n\xff\x00", "h\u00e9llo".encode()
    doc = {"instances": [[b64(png), b64(word)], [b64(b""), "plain"]]}
    rows = (await predict(tf_client, "blobs", doc))["predictions"]
    assert rows[0] == {"out_bytes": [b64(png), b64(word)], "text": [b64(png), "h\u00e9llo"]}
    assert rows[1] == {"out_bytes": [b64(b""), b64(b"plain")], "text": ["", "plain"]}
    out = (await predict(tf_client, "blobs", {"inputs": [[b64(png)]]}))["outputs"]
    assert out == {"out_bytes": [[b64(png)]], "text": [[b64(png)]]}
    assert base64.b64decode(out["out_bytes"][0][0]["b64"]) == png


async def test_multi_output_shapes(tf_client: httpx.AsyncClient) -> None:
    ids = np.array([[1, 2, 3], [2**40, -5, 0]], dtype=np.int64)
    scale = np.arange(8, dtype=np.float64).reshape(2, 2, 2) / 4
    instances = [{"scale": s.tolist(), "ids": i.tolist()} for i, s in zip(ids, scale, strict=True)]
    rows = (await predict(tf_client, "two_kinds", {"instances": instances}))["predictions"]
    assert rows == [{"ids_out": i.tolist(), "scale_out": s.tolist()}
                    for i, s in zip(ids, scale, strict=True)]  # fmt: skip
    assert isinstance(rows[1]["ids_out"][0], int)
    doc = {"inputs": {"ids": ids.tolist(), "scale": scale.tolist()}}
    out = (await predict(tf_client, "two_kinds", doc))["outputs"]
    assert np.shape(out["ids_out"]) == (2, 3) and np.shape(out["scale_out"]) == (2, 2, 2)
    np.testing.assert_array_equal(out["ids_out"], ids)
    np.testing.assert_array_equal(out["scale_out"], scale)
    bad = {"instances": [{"ids": [1, 2, 3], "scale": [[1.0, 2.0], [3.0, 4.0]]}, {"ids": [1, 2, 3]}]}
    response = await tf_client.post("/v1/models/two_kinds:predict", json=bad)
    await assert_error(response, 400, "same inputs")
    floats = {"inputs": {"ids": [[1.5, 2, 3]], "scale": [[[1.0, 2.0], [3.0, 4.0]]]}}
    response = await tf_client.post("/v1/models/two_kinds:predict", json=floats)
    await assert_error(response, 400, "INT64")


async def test_model_without_batch_dimension(tf_client: httpx.AsyncClient) -> None:
    meta = (await tf_client.get("/v1/models/unbatched/metadata")).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "2", "name": ""}]
    # One row of the model's rank is the tensor; its answer is one row.
    rows = (await predict(tf_client, "unbatched", {"instances": [[1.5, -2.0]]}))["predictions"]
    assert rows == [[1.5, -2.0]]
    # Otherwise the rows are the tensor's first dimension, as TF Serving reads them.
    rows = (await predict(tf_client, "unbatched", {"instances": [1.5, -2.0]}))["predictions"]
    assert rows == [1.5, -2.0]
    out = (await predict(tf_client, "unbatched", {"inputs": [0.25, 4.0]}))["outputs"]
    assert out == [0.25, 4.0]
    response = await tf_client.post("/v1/models/unbatched:predict", json={"inputs": [[1.0, 2.0]]})
    await assert_error(response, 400, "shape")
