"""``modelport worker`` (a node of a cluster) and ``modelport workers`` (who is up)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelport.cli.client import call
from modelport.settings import Settings, SettingsError

console = Console()
err = Console(stderr=True)


def worker(
    *,
    repository: Annotated[
        str | None, typer.Argument(help="Model repository folder (default: bundled examples).")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Redis URL, e.g. redis://redis:6379/0 (required).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Task records: postgresql://... shared with the server.")
    ] = None,
    files: Annotated[
        str | None, typer.Option(help="Task files: s3://bucket/prefix shared with the server.")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Models to host, e.g. 'a,b' (default: all).")
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="GPU ids, e.g. '0,1': one task slot per GPU; models placed on them."),
    ] = None,
    slots: Annotated[int | None, typer.Option(help="CPU task slots (without --gpus) [1].")] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="This worker's id (default: host-pid).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A modelport.toml settings file.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Host models and take online requests and tasks from a Redis broker."""
    import uvloop

    from modelport.errors import ModelportError
    from modelport.server.worker import run_worker
    from modelport.supply.pull import PullError

    flags = {
        "repository": repository,
        "broker": broker,
        "task_store": store,
        "task_files": files,
        "worker_models": models,
        "task_gpus": gpus,
        "gpus": gpus,
        "task_slots": slots,
        "worker_id": worker_id,
        "log_level": log_level,
    }
    try:
        settings = Settings.load(flags, config=config)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not settings.broker:
        err.print("[red]error:[/red] a worker needs --broker redis://host:6379/0")
        raise typer.Exit(2)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(run_worker(settings))
    except (ModelportError, PullError) as exc:
        err.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from None


def workers(
    url: Annotated[
        str, typer.Option("--url", envvar="MODELPORT_URL", help="The server's base address.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """List the live workers: models, task slots, running tasks, last heartbeat."""
    found = call("GET", url + "/api/workers")["workers"]
    table = Table("id", "role", "host", "models", "task models", "slots", "running", "seen")
    for w in found:
        online = ", ".join(m["name"] for m in w["models"])
        tasks = ", ".join(w["task_models"])
        running = ", ".join(f"{t[:8]}@{s}" for t, s in w["running"].items())
        seen = f"{max(0.0, time.time() - w['seen_at']):.1f} s ago"
        table.add_row(
            w["id"], w["role"], w["host"], online, tasks, ", ".join(w["slots"]), running, seen
        )
    console.print(table)
    if not found:
        console.print("no live workers (is the server started with --broker redis://...?)")
