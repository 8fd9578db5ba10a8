"""Replicas of one remote model (``remote.urls``), so that fronting a Triton or TF
Serving fleet needs no load balancer in between.

Every instance of a model version shares one :class:`ReplicaSet`: which replicas are in
the rotation, how many batches each has in flight, and their counters. Each instance
talks to the replicas through its own :class:`ReplicaClient` (its own connections, used
from its own thread only, as a single remote's client is):

- a batch goes to the replica in the rotation with the fewest batches in flight (the
  one picked longest ago among equals, so a quiet model spreads its calls too);
- a replica that cannot take it (down, not ready, timed out, overloaded) is failed over
  to the next, so the client sees an error only when every replica in the rotation
  failed it;
- ``health.eject_after`` failures in a row (batches or health checks) eject a replica
  from the rotation, never the last one in it; a health check every
  ``health.interval`` seconds (the model's metadata and readiness, as at load) brings
  an ejected replica back once it passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.core.runtime import TargetStats
from modelport.errors import ModelportError, ModelUnavailable, Overloaded
from modelport.redaction import redact_url
from modelport.runtimes.remote_client import RemoteClient, RemoteMetadata

log = logging.getLogger("modelport.remote")

# What a replica may have failed a batch with that another replica may not: the
# replica is down, not ready, slow or full. Any other error (a rejected request) is
# the request's, and would be the same anywhere.
FAILOVER_ERRORS = (ModelUnavailable, Overloaded)

ClientFactory = Callable[[str], RemoteClient]


@dataclass(slots=True, eq=False)
class Replica:
    """One replica's state in its set; read and written under the set's lock."""

    url: str
    in_flight: int = 0
    failures_in_a_row: int = 0
    ejected: bool = False
    picked: int = 0  # the set's tick when last picked: ties go to the longest idle
    successes: int = 0
    failures: int = 0
    ejections: int = 0


class ReplicaSet:
    """The replicas of one remote model version, shared by its instances' threads and
    watched by a health-check thread of its own (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        urls: tuple[str, ...],
        make_client: ClientFactory,
        interval_s: float,
        eject_after: int,
    ) -> None:
        self.name = name
        self.replicas = tuple(Replica(url) for url in urls)
        self.make_client = make_client
        self.interval_s = interval_s
        self.eject_after = eject_after
        self._lock = threading.Lock()
        self._tick = 0
        self._stopped = threading.Event()
        self._checker = threading.Thread(
            target=self._check_forever, name=f"{name}-health", daemon=True
        )

    def start(self) -> None:
        self._checker.start()

    def stop(self) -> None:
        # Not joined: a check under way may wait out its timeout on a hung replica, and
        # the thread closes its own connections when it sees the event.
        self._stopped.set()

    def pick(self, tried: set[str]) -> Replica | None:
        """The least loaded replica in the rotation not in ``tried`` (counted in flight
        until :meth:`done`), or None when none is left."""
        with self._lock:
            rotation = [r for r in self.replicas if not r.ejected and r.url not in tried]
            if not rotation:
                return None
            replica = min(rotation, key=lambda r: (r.in_flight, r.picked))
            self._tick += 1
            replica.picked = self._tick
            replica.in_flight += 1
            return replica

    def done(self, replica: Replica, *, failed: bool) -> None:
        """A picked replica's batch is over."""
        with self._lock:
            replica.in_flight -= 1
            self._count(replica, failed=failed)

    def _count(self, replica: Replica, *, failed: bool) -> None:
        if not failed:
            replica.successes += 1
            replica.failures_in_a_row = 0
            return
        replica.failures += 1
        replica.failures_in_a_row += 1
        if replica.ejected or replica.failures_in_a_row < self.eject_after:
            return
        # The last replica in the rotation stays: its errors are the answer then.
        if sum(not r.ejected for r in self.replicas) > 1:
            replica.ejected = True
            replica.ejections += 1
            log.warning(
                "model %s: replica %s failed %d times in a row; ejected until its "
                "health check passes",
                self.name,
                redact_url(replica.url),
                replica.failures_in_a_row,
            )

    def _checked(self, replica: Replica, *, passed: bool) -> None:
        with self._lock:
            if passed and replica.ejected:
                replica.ejected = False
                log.info(
                    "model %s: replica %s passed its health check; back in the rotation",
                    self.name,
                    redact_url(replica.url),
                )
            if passed:
                replica.failures_in_a_row = 0
            else:
                self._count(replica, failed=True)

    def _check_forever(self) -> None:
        # The checks' own connections: the instances' are used from their threads only.
        clients: dict[str, RemoteClient] = {}
        try:
            while not self._stopped.wait(self.interval_s):
                for replica in self.replicas:
                    if self._stopped.is_set():
                        break
                    client = clients.get(replica.url)
                    if client is None:
                        client = clients[replica.url] = self.make_client(replica.url)
                    try:
                        client.metadata()
                    except ModelportError:
                        self._checked(replica, passed=False)
                    else:
                        self._checked(replica, passed=True)
        finally:
            for client in clients.values():
                client.close()

    def stats(self) -> tuple[TargetStats, ...]:
        with self._lock:
            return tuple(
                TargetStats(
                    target=redact_url(r.url),
                    up=not r.ejected,
                    in_flight=r.in_flight,
                    successes=r.successes,
                    failures=r.failures,
                    ejections=r.ejections,
                )
                for r in self.replicas
            )


class ReplicaSets:
    """A server's replica sets, one per remote model version whatever its instance
    count; a reload with the same ``remote`` section keeps its set (and counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[str, ReplicaSet] = {}
        self._users: dict[str, int] = {}

    def acquire(self, key: str, make: Callable[[], ReplicaSet]) -> ReplicaSet:
        with self._lock:
            found = self._sets.get(key)
            if found is None:
                found = self._sets[key] = make()
                found.start()
            self._users[key] = self._users.get(key, 0) + 1
            return found

    def release(self, key: str) -> None:
        with self._lock:
            self._users[key] -= 1
            if self._users[key]:
                return
            del self._users[key]
            gone = self._sets.pop(key)
        gone.stop()


class ReplicaClient:
    """One instance's way to a replica set: a client per replica, made on first use,
    and failover between them (a :class:`RemoteClient` itself)."""

    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas
        self._clients: dict[str, RemoteClient] = {}

    def _client(self, url: str) -> RemoteClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self.replicas.make_client(url)
        return client

    def _first_answer(self, call: Callable[[RemoteClient], Any]) -> Any:
        tried: set[str] = set()
        last: ModelportError | None = None
        while (replica := self.replicas.pick(tried)) is not None:
            tried.add(replica.url)
            try:
                answer = call(self._client(replica.url))
            except FAILOVER_ERRORS as exc:
                self.replicas.done(replica, failed=True)
                last = exc
                continue
            except BaseException:
                self.replicas.done(replica, failed=False)
                raise
            self.replicas.done(replica, failed=False)
            return answer
        if last is None:  # only when the set has no replica at all
            raise ModelUnavailable(f"model '{self.replicas.name}' has no replica in rotation")
        raise last

    def metadata(self) -> RemoteMetadata:
        found: RemoteMetadata = self._first_answer(lambda client: client.metadata())
        return found

    def infer(
        self,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        parameters: Mapping[str, Any],
        trace_headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        outputs: dict[str, np.ndarray] = self._first_answer(
            lambda client: client.infer(inputs, parameters, trace_headers)
        )
        return outputs

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
