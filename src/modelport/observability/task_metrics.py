"""Task metrics: tasks by status (read from the task store at scrape time, so every
server sharing the store reports the same counts) and this server's task slots."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from modelport.tasks.service import TaskService


class TaskMetrics:
    """``modelport_tasks{status}``, ``modelport_task_slots``, ``modelport_task_slots_busy``."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        counts = GaugeMetricFamily(
            "modelport_tasks", "Tasks by status, in the task store", labels=["status"]
        )
        for status, count in self.tasks.store.count_by_status().items():
            counts.add_metric([status.value], count)
        worker = self.tasks.worker
        slots = GaugeMetricFamily("modelport_task_slots", "Task slots of this server")
        slots.add_metric([], len(worker.slots) if worker is not None else 0)
        busy = GaugeMetricFamily("modelport_task_slots_busy", "Task slots running a task now")
        busy.add_metric([], len(worker.running) if worker is not None else 0)
        yield from (counts, slots, busy)
