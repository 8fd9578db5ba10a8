"""An ABLInfer session's run as a task: what the task record carries, and the job it is.

The record's parameters hold the whole spec document and the session's checked choices
(under :data:`ABLINFER_RUN`), so any worker runs it, the spec folder unseen, and a spec
edited meanwhile does not change a session already queued. The job keeps the image's
ENTRYPOINT (only the Cmd is set: the arguments the client library would build), copies
the inputs into the spec's ``data_path`` and the enabled outputs back out of it, with no
mounts, as upstream's server does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modelport.errors import SpecError
from modelport.runtimes.container import ContainerJob
from modelport.spec import ContainerSpec
from modelport.spec.ablinfer import AblinferSpec, parse_spec
from modelport.spec.ablinfer_session import SessionPlan, container_args

ABLINFER_RUN = "ablinfer"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerOptions:
    """The ``model.yaml`` container settings that an ABLInfer spec lacks, from the server's
    settings: limits, network, user, timeout (the spec names only the image)."""

    cpus: float | None = None
    memory: str | None = None
    timeout: float = 3600.0
    network: Literal["none", "bridge"] = "none"
    user: str = "image"

    def to_json(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory": self.memory,
            "timeout": self.timeout,
            "network": self.network,
            "user": self.user,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AblinferRun:
    """A session's run: its spec, its checked choices, the container settings."""

    spec: AblinferSpec
    plan: SessionPlan
    options: ContainerOptions

    def to_parameters(self) -> dict[str, Any]:
        """The task record's parameters."""
        return {
            ABLINFER_RUN: {
                "spec": self.spec.document,
                "source": self.spec.source,
                "plan": self.plan.to_json(),
                "container": self.options.to_json(),
            }
        }

    @classmethod
    def of(cls, parameters: Mapping[str, Any]) -> AblinferRun | None:
        """The run a task's parameters describe; None for a repository model's task."""
        data = parameters.get(ABLINFER_RUN)
        if not isinstance(data, dict):
            return None
        try:
            spec = parse_spec(data["spec"], str(data.get("source", "")))
            return cls(
                spec=spec,
                plan=SessionPlan.from_json(data["plan"]),
                options=ContainerOptions(**_network_named(data["container"])),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"the ABLInfer session's stored run is broken: {exc!r}") from None

    def job(
        self,
        *,
        task_id: str,
        folder: Path,
        input_dir: Path,
        output_dir: Path,
        log_path: Path,
        gpu: int | None,
    ) -> ContainerJob:
        """The container job: on a GPU slot it gets the slot's GPU, else none."""
        container = ContainerSpec(
            image=self.spec.image,
            command=tuple(container_args(self.spec, self.plan)),
            gpus=0 if gpu is None else 1,
            cpus=self.options.cpus,
            memory=self.options.memory,
            timeout=self.options.timeout,
            network=self.options.network,
            user=self.options.user,
        )
        outputs = [n for n in self.spec.io("outputs") if self.plan.enabled.get(n)]
        return ContainerJob(
            task_id=task_id,
            spec=container,
            model_dir=folder,
            input_dir=input_dir,
            output_dir=output_dir,
            log_path=log_path,
            gpu=gpu,
            copy_to=self.spec.data_path,
            copy_back=tuple(self.spec.container_path(n) for n in outputs),
        )


def _network_named(options: dict[str, Any]) -> dict[str, Any]:
    """Runs stored before the network setting took a name kept it as true or false."""
    network = options.get("network")
    if isinstance(network, bool):
        return {**options, "network": "bridge" if network else "none"}
    return options
