"""Traces, read from the OpenTelemetry SDK's in-memory exporter.

The server runs in this process (``serve(..., tracer_provider=...)`` in the test's event
loop, on real ports, stopped by cancelling it), so its spans land in an
``InMemorySpanExporter`` the test reads; the clients are real (httpx, a gRPC stub, the
tasks API), each sending a W3C ``traceparent`` of its own. The cluster hop runs a
gateway and a worker (``run_worker``) in this process too, on a real redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from modelport.cluster.keys import RedisKeys
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.server.serve import serve
from modelport.server.worker import run_worker
from modelport.settings import Settings
from support.builders import add_sub_onnx, write_model
from support.cluster_fixtures import RedisServer, redis_server
from support.task_fixtures import docker_image

__all__ = ["docker_image", "redis_server"]  # fixtures, imported for the tests below

pytestmark = pytest.mark.timeout(90)

ADD_SUB = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}
TRACE_ENV = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, 'echo "$TRACEPARENT" > /output/traceparent']
"""


class Traceparent:
    """A client's span context, sent as a W3C ``traceparent``."""

    def __init__(self) -> None:
        self.trace_id, self.span_id = secrets.token_hex(16), secrets.token_hex(8)

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


@contextlib.asynccontextmanager
async def _running(
    start: Callable[[], Coroutine[Any, Any, None]], ready: Callable[[], Any]
) -> AsyncIterator[None]:
    """Run ``start()`` as a task until ``ready()`` is true; cancel it afterwards."""
    task = asyncio.create_task(start())
    try:
        async with asyncio.timeout(60):
            while not await ready():
                if task.done():
                    task.result()  # its error, if it failed
                    raise AssertionError("the server stopped before it was ready")
                await asyncio.sleep(0.05)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _answers(url: str, path: str = "/v2/health/ready") -> bool:
    async with httpx.AsyncClient() as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(url + path, timeout=2)).status_code == 200
    return False


def _all(spans: list[ReadableSpan], name: str, trace_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and f"{s.context.trace_id:032x}" == trace_id]


def _one(spans: list[ReadableSpan], name: str, trace_id: str) -> ReadableSpan:
    found = _all(spans, name, trace_id)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def _parent_of(span: ReadableSpan) -> tuple[str, str]:
    assert span.parent is not None, span.name
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


def _ids(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


async def test_http_grpc_remote_hop_and_task_spans(
    tmp_path: Path,
    docker_image: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    free_port: Callable[[], int],
) -> None:
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    repo = tmp_path / "models"
    add_sub_onnx(
        write_model(repo, "add_sub", "runtime: onnx\nmax_batch_size: 8\n") / "1" / "model.onnx",
        width=4,
    )
    # A remote model whose remote is this same server: its hop comes back as a request.
    remote = f"runtime: remote\nmax_batch_size: 8\nremote: {{url: '{url}', model: add_sub}}\n"
    write_model(repo, "front", remote, {"1/README": "remote"})
    write_model(repo, "trace_env", TRACE_ENV.format(image=docker_image), {"1/x": "x"})
    settings = Settings(
        repository=str(repo),
        port=port,
        grpc_port=grpc_port,
        data_dir=str(tmp_path / "data"),
        model_sources=(f"{url}*",),
        startup_models=("add_sub", "trace_env"),
        log_level="warning",
    )
    async with (
        _running(lambda: serve(settings, tracer_provider=provider), lambda: _answers(url)),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        loaded = await client.post("/v2/repository/models/front/load")
        assert loaded.status_code == 200, loaded.text
        exporter.clear()

        # HTTP, and the remote hop back into this server.
        http, hop = Traceparent(), Traceparent()
        for model, parent in (("add_sub", http), ("front", hop)):
            answer = await client.post(
                f"/v2/models/{model}/infer", json=ADD_SUB, headers={"traceparent": parent.header}
            )
            assert answer.status_code == 200, answer.text
        # gRPC, with the traceparent as call metadata.
        over_grpc = Traceparent()
        await asyncio.to_thread(_grpc_infer, f"127.0.0.1:{grpc_port}", over_grpc.header)
        # A task, submitted in a trace.
        task = Traceparent()
        submitted = await client.post(
            "/api/tasks",
            data={"model": "trace_env"},
            files=[("files", ("a.txt", b"x"))],
            headers={"traceparent": task.header},
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["id"]
        async with asyncio.timeout(60):
            while (await client.get(f"/api/tasks/{task_id}")).json()["status"] != "succeeded":
                await asyncio.sleep(0.1)
        output = await client.get(f"/api/tasks/{task_id}/output")
        seen_by_container = _zip_member(output.content, "traceparent").strip()

    spans = list(exporter.get_finished_spans())
    infer = "POST /v2/models/{model}/infer"
    # The HTTP request: a child of the client's span, its queue wait, its batch linked.
    request = _one(spans, infer, http.trace_id)
    assert _parent_of(request) == (http.trace_id, http.span_id)
    assert request.kind is SpanKind.SERVER
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["modelport.model"] == "add_sub"
    wait = _one(spans, "queue wait", http.trace_id)
    assert _parent_of(wait) == _ids(request)
    batch = _one(spans, "batch add_sub", http.trace_id)
    assert _parent_of(batch) == _ids(request)
    assert [_ids_of(link.context) for link in batch.links] == [_ids(request)]
    assert batch.attributes["modelport.batch.rows"] == 1
    assert wait.end_time <= batch.start_time

    # gRPC: the same shape.
    call = _one(spans, "inference.GRPCInferenceService/ModelInfer", over_grpc.trace_id)
    assert _parent_of(call) == (over_grpc.trace_id, over_grpc.span_id)
    assert call.attributes["modelport.status"] == "OK"
    grpc_batch = _one(spans, "batch add_sub", over_grpc.trace_id)
    assert [_ids_of(link.context) for link in grpc_batch.links] == [_ids(call)]

    # The remote hop: front's batch -> a CLIENT span -> the remote's request, one trace.
    requests = _all(spans, infer, hop.trace_id)
    assert sorted(s.attributes["modelport.model"] for s in requests) == ["add_sub", "front"]
    outer = next(s for s in requests if s.attributes["modelport.model"] == "front")
    inner = next(s for s in requests if s.attributes["modelport.model"] == "add_sub")
    assert _parent_of(outer) == (hop.trace_id, hop.span_id)
    front_batch = _one(spans, "batch front", hop.trace_id)
    client_hop = _one(spans, "remote infer", hop.trace_id)
    assert client_hop.kind is SpanKind.CLIENT
    assert _parent_of(client_hop) == _ids(front_batch)
    assert _parent_of(inner) == _ids(client_hop)

    # The task: a child of the submitter's span; its container saw the task span's context.
    run = _one(spans, "task trace_env", task.trace_id)
    assert _parent_of(run) == (task.trace_id, task.span_id)
    assert run.attributes["modelport.task.outcome"] == "succeeded"
    trace_id, span_id = _ids(run)
    assert seen_by_container == f"00-{trace_id}-{span_id}-01"


def _ids_of(context: Any) -> tuple[str, str]:
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _grpc_infer(target: str, traceparent: str) -> None:
    request = pb.ModelInferRequest(model_name="add_sub")
    for name, values in (("INPUT0", [1, 2, 3, 4]), ("INPUT1", [1, 1, 1, 1])):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.array(values, dtype=np.float32).tobytes())
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, timeout=10, metadata=(("traceparent", traceparent),))


def _zip_member(data: bytes, name: str) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name).decode()


async def test_the_cluster_hop_carries_the_trace_through_redis(
    tmp_path: Path,
    redis_server: RedisServer,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    models = tmp_path / "worker-models"
    add_sub_onnx(
        write_model(models, "add_sub", "runtime: onnx\nmax_batch_size: 8\n") / "1" / "model.onnx",
        width=4,
    )
    worker = Settings(
        repository=str(models),
        broker=redis_server.url,
        worker_id="w1",
        task_slots=0,
        data_dir=str(tmp_path / "worker-data"),
        log_level="warning",
    )
    gateway = Settings(
        repository=str(tmp_path / "empty"),
        port=port,
        grpc_port=0,
        broker=redis_server.url,
        data_dir=str(tmp_path / "gateway-data"),
        task_slots=0,
        log_level="warning",
    )
    (tmp_path / "empty").mkdir()
    stop = asyncio.Event()
    async with (
        _running(
            lambda: run_worker(worker, stop, tracer_provider=provider),
            lambda: _worker_up(redis_server, "w1"),
        ),
        _running(
            lambda: serve(gateway, tracer_provider=provider),
            lambda: _answers(url, "/v2/models/add_sub/ready"),
        ),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        caller = Traceparent()
        answer = await client.post(
            "/v2/models/add_sub/infer", json=ADD_SUB, headers={"traceparent": caller.header}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [2, 3, 4, 5]
        stop.set()

    spans = list(exporter.get_finished_spans())
    request = _one(spans, "POST /v2/models/{model}/infer", caller.trace_id)
    assert _parent_of(request) == (caller.trace_id, caller.span_id)
    # The gateway's batch -> its hop -> the worker's span of the message -> its batch.
    batches = _all(spans, "batch add_sub", caller.trace_id)
    assert len(batches) == 2
    gateway_batch = next(b for b in batches if _parent_of(b) == _ids(request))
    hop = _one(spans, "cluster infer", caller.trace_id)
    assert hop.kind is SpanKind.CLIENT and _parent_of(hop) == _ids(gateway_batch)
    consumed = _one(spans, "cluster add_sub", caller.trace_id)
    assert consumed.kind is SpanKind.CONSUMER and _parent_of(consumed) == _ids(hop)
    worker_batch = next(b for b in batches if b is not gateway_batch)
    assert _parent_of(worker_batch) == _ids(consumed)


async def _worker_up(redis: RedisServer, worker_id: str) -> bool:
    """The worker has announced itself in the cluster's directory."""
    client = redis.client()
    try:
        return bool(await asyncio.to_thread(client.exists, RedisKeys().worker(worker_id)))
    finally:
        client.close()


def test_modelport_runs_without_opentelemetry() -> None:
    """No otel_endpoint: the otel extra's packages (the SDK, the exporter) are never
    imported; with one and no extra, the setting's error says what to install. (They are
    hidden from a fresh interpreter, since this one has them; opentelemetry-api itself
    comes with FastAPI.)"""
    script = """
import sys
EXTRA = ("opentelemetry.sdk", "opentelemetry.exporter")
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(EXTRA):
            raise ImportError(f"no {name} here")
sys.meta_path.insert(0, Hide())
from modelport.server.serve import serve
from modelport.observability.tracing import start_tracing
from modelport.settings import SettingsError
assert start_tracing("", service_name="m") is None
assert not any(m.startswith(EXTRA) for m in sys.modules), "imported"
try:
    start_tracing("http://collector:4318", service_name="m")
except SettingsError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "install modelport[otel]" in done.stdout, done.stdout
