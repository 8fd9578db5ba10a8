"""The gateway half: models that other workers host, served here through Redis.

:class:`ClusterRepository` lists, beside the local repository's models, every online
model a live worker advertises (local models win a name clash). Such a model loads as
``runtime: cluster``: a :class:`ClusterRuntime` per instance, whose ``infer`` sends the
batch the local batcher formed to the model's request stream and waits for the answer
on a list of its own (``XADD`` and the first ``BLPOP`` go in one pipeline: one round
trip). The consumer group shares the stream among the workers hosting the model. With
tracing on, the message carries the hop's W3C ``traceparent`` (header ``trace``), so the
worker's span of the request joins the trace. A request whose model has no live worker
left fails at once (503), as does one that gets no answer within ``timeout_s``; a worker
that died holding a request has it retried once by another worker (``cluster/consumer.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis import Redis

from modelport.cluster import wire
from modelport.cluster.directory import Directory, HostedModel
from modelport.cluster.keys import RedisKeys
from modelport.core.repository import ModelRepository, ModelSource
from modelport.core.runtime import RuntimeContext, Signature
from modelport.core.service import ModelView
from modelport.errors import (
    DeadlineExceeded,
    ErrorKind,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    Overloaded,
)
from modelport.spec import ModelSpec, TensorSpec

CLUSTER_RUNTIME = "cluster"
# Batches in flight at once from this gateway to one remote model.
GATEWAY_INSTANCES = 8
POLL_S = 0.5
# A model whose workers all vanished from the directory this long fails its requests.
NO_HOST_GRACE_S = 0.5

_ERRORS: dict[str, type[ModelportError]] = {
    ErrorKind.INVALID_INPUT.value: InvalidInput,
    ErrorKind.NOT_FOUND.value: ModelNotFound,
    ErrorKind.UNAVAILABLE.value: ModelUnavailable,
    ErrorKind.OVERLOADED.value: Overloaded,
    ErrorKind.DEADLINE_EXCEEDED.value: DeadlineExceeded,
}


class ClusterRepository(ModelRepository):
    """The local repository plus the models live workers host (see module docstring)."""

    def __init__(self, local: ModelRepository, directory: Directory, me: str) -> None:
        super().__init__(local.root)
        self.local, self.directory, self.me = local, directory, me

    def remote_models(self) -> dict[str, HostedModel]:
        local = set(self.local.names())
        hosted = self.directory.hosted_models(exclude=self.me)
        return {name: m for name, m in hosted.items() if name not in local}

    def names(self) -> list[str]:
        return sorted({*self.local.names(), *self.remote_models()})

    def source(self, name: str) -> ModelSource:
        if name in self.local.names():
            return self.local.source(name)
        hosted = self.remote_models().get(name)
        if hosted is None:
            return self.local.source(name)  # raises ModelNotFound
        spec = ModelSpec.model_validate(
            {
                "name": name,
                "runtime": CLUSTER_RUNTIME,
                "max_batch_size": hosted.max_batch_size,
                "inputs": hosted.inputs,
                "outputs": hosted.outputs,
                "instances": {"count": GATEWAY_INSTANCES},
                "description": "served by workers through Redis",
                # The workers' platform, so clients see what they run, not "cluster".
                "parameters": {"platform": hosted.platform},
            }
        )
        return ModelSource(name, Path(self.root, ".cluster", name), spec, hosted.versions)


def hosted_model(model: ModelView) -> HostedModel:
    """How a worker advertises one of its online models (one that serves versions)."""
    assert model.spec is not None and model.latest is not None
    signature = model.latest.signature

    def dump(tensors: tuple[TensorSpec, ...]) -> tuple[dict[str, Any], ...]:
        return tuple(t.model_dump(mode="json", exclude_defaults=True) for t in tensors)

    return HostedModel(
        name=model.name,
        versions=tuple(v.version for v in model.versions),
        max_batch_size=model.spec.max_batch_size,
        inputs=dump(signature.inputs),
        outputs=dump(signature.outputs),
        platform=model.platform,
    )


class ClusterRuntime:
    """Sends each batch to the workers hosting the model (see module docstring)."""

    def __init__(
        self,
        context: RuntimeContext,
        *,
        client: Redis,
        keys: RedisKeys,
        directory: Directory,
        timeout_s: float = 30.0,
    ) -> None:
        self.context, self.client, self.keys = context, client, keys
        self.directory, self.timeout_s = directory, timeout_s
        self.model = context.spec.name

    def load(self) -> None:
        pass

    def signature(self) -> Signature:
        return Signature(self.context.spec.inputs, self.context.spec.outputs)

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        tracer = self.context.tracer
        if tracer is None:
            return self._infer(inputs, parameters, None)
        with tracer.hop("cluster infer", peer=self.keys.infer_stream(self.model)) as headers:
            return self._infer(inputs, parameters, headers)

    def _infer(
        self,
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, Any],
        trace: dict[str, str] | None,
    ) -> dict[str, np.ndarray]:
        """Send the batch and wait for its answer; ``trace``: the hop's W3C headers,
        carried in the message for the worker's span."""
        request_id = uuid.uuid4().hex
        reply = self.keys.reply(request_id)
        deadline = time.time() + self.timeout_s
        header = {
            "id": request_id,
            "model": self.model,
            "version": str(self.context.version),
            "parameters": dict(parameters),
            "reply": reply,
            "deadline": deadline,
        }
        if trace:
            header["trace"] = trace
        stream = self.keys.infer_stream(self.model)
        message_id = None
        try:
            # One round trip: the request goes out and the wait for its answer begins.
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, {"m": wire.pack(header, inputs)})
                pipe.blpop([reply], timeout=POLL_S)
                message_id, got = pipe.execute()
            return self._answer(reply, deadline, got)
        except redis.RedisError as exc:
            raise ModelUnavailable(
                f"model '{self.model}' runs on other workers, and Redis is not reachable: {exc}"
            ) from None
        except ModelUnavailable:
            # Nobody will answer: take the request back so no worker runs it later.
            if message_id is not None:
                self.client.xdel(stream, message_id)
            raise

    def _answer(self, reply: str, deadline: float, got: Any) -> dict[str, np.ndarray]:
        """The answer: ``got`` if the first wait brought it, else waited for."""
        hostless_since: float | None = None
        while True:
            if got is not None:
                header, outputs = wire.unpack(got[1])
                if "error" in header:
                    kind = _ERRORS.get(str(header.get("kind")), InferenceFailed)
                    raise kind(str(header["error"]))
                return outputs
            now = time.time()
            if now >= deadline:
                raise ModelUnavailable(
                    f"model '{self.model}': no worker answered within {self.timeout_s:g} s"
                )
            if self.directory.hosts(self.model):
                hostless_since = None
            elif hostless_since is None:
                hostless_since = now
            elif now - hostless_since >= NO_HOST_GRACE_S:
                raise ModelUnavailable(
                    f"model '{self.model}': no live worker hosts it any more (the last one "
                    "stopped sending heartbeats); start one with 'modelport worker'"
                )
            got = self.client.blpop([reply], timeout=POLL_S)

    def unload(self) -> None:
        pass
