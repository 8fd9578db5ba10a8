"""The ``remote`` runtime: a model that runs on another server speaking KServe v2.

modelport fronts an existing fleet (Triton, another modelport) this way: routing,
dynamic batching, metrics, limits and friendly outputs stay here, and each batch the
front's batcher forms is sent to the remote as one request::

    # models/resnet/model.yaml
    runtime: remote
    max_batch_size: 32
    instances: {count: 4}          # four connections to the remote, batches in parallel
    remote:
      url: grpc://triton-3:8001    # or http://triton-3:8000
      model: resnet50_onnx         # the remote's name; default: this model's name
      version: 2                   # default: the remote's choice
      timeout: 5                   # seconds per request
      headers: {authorization: Bearer abc}   # HTTP headers, or gRPC metadata

``urls: [...]`` in place of ``url`` names replicas of the remote model, each batch
going to the least loaded one, with failover, ejection and health checks
(``modelport.runtimes.remote_replicas``); ``version: same`` asks the remote for the
version of the local version's number.

``load`` checks that the remote model is ready and reads its metadata, so the signature
comes from the remote when model.yaml declares none (its batch dimension dropped when
the front batches). Over HTTP, tensors travel with Triton's binary data extension on a
persistent ``httpx.Client``; over gRPC, in ``raw_input_contents`` on a sync channel. Each
instance owns its connection and uses it only from its own thread.

The remote's URL must be allowed by the ``model_sources`` setting
(``modelport.supply.allow_lists``); otherwise the model is UNAVAILABLE, with a reason
naming the URL and the setting.

Remote failures become modelport errors: a request the remote rejects (400,
INVALID_ARGUMENT) is :class:`InvalidInput`; a remote that is down, refuses the
connection, lacks the model (404, NOT_FOUND) or times out is :class:`ModelUnavailable`
naming the URL; a remote that is overloaded (429, 503 with Retry-After,
RESOURCE_EXHAUSTED) is :class:`Overloaded`. Connection failures are not retried here:
the client is answered at once and may retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature, TargetStats
from modelport.errors import ModelUnavailable, SpecError
from modelport.redaction import redact_url
from modelport.runtimes.remote_client import RemoteClient, RemoteTensor
from modelport.runtimes.remote_replicas import ReplicaClient, ReplicaSet, ReplicaSets
from modelport.runtimes.remote_tfserving import TfServingClient
from modelport.runtimes.remote_v2 import GrpcV2Client, HttpV2Client
from modelport.spec import SPEC_FILE, RemoteSpec, TensorSpec
from modelport.supply.allow_lists import AllowList
from modelport.tensors import DATATYPES, datatype_of


class RemoteRuntime:
    """Runs a model's batches on a remote KServe v2 server (see the module docstring)."""

    def __init__(
        self,
        context: RuntimeContext,
        sources: AllowList | None = None,
        replica_sets: ReplicaSets | None = None,
    ) -> None:
        """``replica_sets``: the server's, so that a model version's instances share
        one set of replicas (``remote.urls``); a runtime made alone has its own."""
        self.context = context
        # Where remotes may be (model_sources); none unless the operator names them.
        self.sources = sources or AllowList((), "model_sources")
        self.replica_sets = replica_sets or ReplicaSets()
        remote = context.spec.remote
        if remote is None:  # spec.py refuses this; kept for a hand-built spec
            raise SpecError(f"{context.model_dir / SPEC_FILE}: field 'remote': missing")
        if remote.version == "same":
            remote = remote.model_copy(update={"version": context.version})
        self.remote = remote
        self.model = remote.model or context.spec.name
        self.client: RemoteClient | None = None
        self._replicas: ReplicaSet | None = None
        self._replicas_key = f"{context.spec.name}/{context.version}/{remote.model_dump_json()}"
        self._signature = Signature((), ())
        self._types: dict[str, str] = {}

    def _client_at(self, url: str) -> RemoteClient:
        remote = self.remote.model_copy(update={"url": url, "urls": ()})
        return self._client_for(remote)

    def _client_for(self, remote: RemoteSpec) -> RemoteClient:
        if remote.protocol == "tfserving":
            return TfServingClient(remote, self.model)
        if remote.url.startswith("grpc://"):
            return GrpcV2Client(remote, self.model)
        return HttpV2Client(remote, self.model)

    def load(self) -> None:
        field = "remote.urls" if self.remote.urls else "remote.url"
        for url in self.remote.replicas:
            self.sources.check_url(url, f"model '{self.context.spec.name}': {field}")
        client: RemoteClient
        if self.remote.urls:
            self._replicas = self.replica_sets.acquire(self._replicas_key, self._new_replicas)
            client = ReplicaClient(self._replicas)
        else:
            client = self._client_for(self.remote)
        try:
            found = client.metadata()
            self._signature = Signature(
                tuple(self._tensor(t) for t in found.inputs),
                tuple(self._tensor(t) for t in found.outputs),
            )
        except BaseException:
            self._close_client(client)
            raise
        self.client = client
        declared = self.context.spec.inputs or self._signature.inputs
        self._types = {t.name: t.datatype for t in declared}

    def _new_replicas(self) -> ReplicaSet:
        return ReplicaSet(
            name=self.context.spec.name,
            urls=self.remote.urls,
            make_client=self._client_at,
            interval_s=self.remote.health.interval,
            eject_after=self.remote.health.eject_after,
        )

    def _close_client(self, client: RemoteClient) -> None:
        client.close()
        if self._replicas is not None:
            self._replicas = None
            self.replica_sets.release(self._replicas_key)

    def targets(self) -> tuple[TargetStats, ...]:
        """Each replica's state and counters (none for a single ``url``)."""
        return self._replicas.stats() if self._replicas is not None else ()

    def _tensor(self, tensor: RemoteTensor) -> TensorSpec:
        where = f"{self.context.model_dir / SPEC_FILE}: field 'remote'"
        dims = tuple(-1 if d < 0 else d for d in tensor.shape)
        batch = self.context.spec.max_batch_size
        if batch:
            if not dims or dims[0] != -1:
                raise SpecError(
                    f"{where}: the remote's tensor '{tensor.name}' has shape {list(dims)}, "
                    "with no variable first (batch) dimension, so the remote does not batch; "
                    "set max_batch_size: 0"
                )
            dims = dims[1:]
        if tensor.datatype not in DATATYPES:
            raise SpecError(
                f"{where}: the remote's tensor '{tensor.name}' has datatype "
                f"{tensor.datatype}, which modelport does not serve"
            )
        return TensorSpec(name=tensor.name, datatype=tensor.datatype, shape=dims)

    def signature(self) -> Signature:
        return self._signature

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        if self.client is None:
            raise ModelUnavailable(f"model '{self.context.spec.name}' is not loaded")
        typed = {
            name: (self._types.get(name) or datatype_of(array), array)
            for name, array in inputs.items()
        }
        tracer = self.context.tracer
        if tracer is None:
            return self.client.infer(typed, parameters)
        peer = ",".join(redact_url(url) for url in self.remote.replicas)
        with tracer.hop("remote infer", peer=peer) as headers:
            return self.client.infer(typed, parameters, headers)

    def unload(self) -> None:
        if self.client is not None:
            self._close_client(self.client)
            self.client = None
