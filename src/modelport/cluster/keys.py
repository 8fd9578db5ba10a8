"""Every Redis key modelport uses, in one place.

``<prefix>:infer:<model>``   stream of online requests for a model; group ``workers``
``<prefix>:tasks:<model>``   stream of task ids for a container model; group ``workers``
``<prefix>:reply:<id>``      list the answer of one online request is pushed to
``<prefix>:worker:<id>``     a worker's last heartbeat (JSON), expiring on its own
``<prefix>:workers``         sorted set of worker ids by last heartbeat time
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = "modelport"

    def infer_stream(self, model: str) -> str:
        return f"{self.prefix}:infer:{model}"

    def task_stream(self, model: str) -> str:
        return f"{self.prefix}:tasks:{model}"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}:reply:{request_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"
